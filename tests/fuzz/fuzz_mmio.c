/*
 * The virtio-mmio register interface: sequences of reads and writes of every size at
 * every offset (registers and config space) of a blk, net, vsock or rng device, in any
 * order and any device state, with worker rounds in between. The RAM image comes first,
 * so queues the fuzzer sets up find rings.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "env.h"

static int memfd = -1;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };
    static const uint8_t mac[6] = { 0x52, 0x54, 0, 0x12, 0x34, 0x56 };
    char path[96];
    int rc = 0;

    struct kvmvm_vm *vm = fuzz_vm_new();
    uint8_t kind = in_u8(&in) % 4;
    if (kind == 0) {
        rc = kvmvm_vm_add_virtio_rng(vm, FUZZ_MMIO, 5, 0);
    } else if (kind == 1) {
        if (memfd < 0 && (memfd = memfd_create("fuzz-mmio", 0)) < 0)
            abort();
        if (ftruncate(memfd, 0) < 0 || ftruncate(memfd, 16384) < 0)
            abort();
        snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
        rc = kvmvm_vm_add_virtio_blk(vm, FUZZ_MMIO, 5, 0, path, 0, "mmio");
    } else if (kind == 2) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
            abort();
        close(sv[1]);
        rc = virtio_net_add_fd(vm, FUZZ_MMIO, 5, 0, sv[0], mac);
    } else {
        snprintf(path, sizeof(path), "/tmp/kvmvm-fuzz-mmio-%d.sock", (int)getpid());
        unlink(path);
        rc = kvmvm_vm_add_virtio_vsock(vm, FUZZ_MMIO, 5, 0, 3, path);
    }
    if (rc < 0)
        abort();
    struct virtio_dev *d = virtio_find(vm, FUZZ_MMIO);
    uint16_t image = in_u16(&in);
    in_bytes(&in, fuzz_ram(vm), image);
    for (int op = 0; op < 256 && in.n > 0; op++) {
        uint8_t k = in_u8(&in);
        uint64_t off = in_u16(&in) & 0x1ff;
        uint32_t len = 1u << (k & 3);
        uint8_t buf[8] = { 0 };
        if (k & 0x80) {
            fuzz_worker_round(d);
        } else if (k & 4) {
            in_bytes(&in, buf, len);
            bus_dispatch(&vm->mmio, FUZZ_MMIO + off, 1, buf, len);
        } else {
            bus_dispatch(&vm->mmio, FUZZ_MMIO + off, 0, buf, len);
        }
        if (k & 8)
            fuzz_worker_round(d);
    }
    fuzz_vm_free(vm);
    return 0;
}
