/*
 * virtio-net's TX and RX paths through the real transport, with a datagram socketpair in
 * place of the TAP (same framing: one vnet header + frame per read/write). The host side
 * injects frames of fuzzer bytes; what the device writes out is drained and checked.
 * Half the inputs also turn on the handshake ACKs passt's backend gets (net_handshake.c).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "env.h"

static int host = -1;

static void drain(void)
{
    uint8_t f[70000];
    ssize_t n;
    while ((n = recv(host, f, sizeof(f), MSG_DONTWAIT)) > 0) {
        /* no offloads were negotiated: the header must reach the host zeroed */
        static const uint8_t zero[12];
        if (n < 12 || memcmp(f, zero, 12))
            abort();
    }
}

static void backend(struct kvmvm_vm *vm, struct virtio_dev *d, struct fuzz_in *in)
{
    uint8_t f[2048];
    (void)vm; (void)d;
    size_t n = in_u16(in) % sizeof(f);
    in_bytes(in, f, n);
    (void)!send(host, f, n, MSG_DONTWAIT);
    drain();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };
    static const uint8_t mac[6] = { 0x52, 0x54, 0, 0x12, 0x34, 0x56 };
    static const struct fuzz_queue q[2] = {
        { 0x1000, 0x2000, 0x3000, 64 }, { 0x4000, 0x5000, 0x6000, 64 },
    };
    int sv[2];

    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    host = sv[1];
    struct kvmvm_vm *vm = fuzz_vm_new();
    if (virtio_net_add_fd(vm, FUZZ_MMIO, 5, 0, sv[0], mac) < 0)
        abort();
    uint8_t opts = in_u8(&in);
    /* bit 1: the handshake ACKs of passt's backend (net_handshake.c parses every frame) */
    if (opts & 2 && kvmvm_vm_virtio_net_ack_handshakes(vm, FUZZ_MMIO) < 0)
        abort();
    struct virtio_dev *d = fuzz_driver_setup(vm, opts & 1 ? (1u << 5) : 0, q, 2);
    if (d)
        fuzz_drive(vm, d, q, 2, &in, 48, backend);
    drain();
    fuzz_vm_free(vm);
    close(host);
    return 0;
}
