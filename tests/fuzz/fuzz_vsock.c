/*
 * virtio-vsock: the packet parser and the connection state machine, through the real
 * transport. The guest side is a hostile driver script; the host side, also fuzzer-driven,
 * connects to the device's Unix socket ("CONNECT <port>" or garbage), writes, shuts down
 * and closes, and a host service on port 5000 accepts what the guest opens.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "env.h"

#define NHOST 8

static char uds[96];
static int service = -1;
static int hostfd[NHOST], acc[NHOST];

static int host_connect(const char *line, size_t n)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", uds);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        abort();
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    (void)!send(fd, line, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    return fd;
}

static void set(int *arr, int k, int fd)
{
    if (arr[k] >= 0)
        close(arr[k]);
    arr[k] = fd;
}

static void backend(struct kvmvm_vm *vm, struct virtio_dev *d, struct fuzz_in *in)
{
    uint8_t buf[4096];
    (void)vm; (void)d;
    uint8_t op = in_u8(in);
    int k = (op >> 4) % NHOST;
    switch (op & 7) {
    case 0: {
        char line[40];
        int n = snprintf(line, sizeof(line), "CONNECT %u\n", in_u16(in) % 4 ? 1234 : in_u32(in));
        set(hostfd, k, host_connect(line, (size_t)n));
        break;
    }
    case 1: {
        size_t n = in_u8(in) % 48;
        in_bytes(in, buf, n);
        set(hostfd, k, host_connect((char *)buf, n));
        break;
    }
    case 2: {
        size_t n = in_u16(in) % sizeof(buf);
        in_bytes(in, buf, n);
        if (hostfd[k] >= 0)
            (void)!send(hostfd[k], buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (acc[k] >= 0)
            (void)!send(acc[k], buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        break;
    }
    case 3:
        set(hostfd, k, -1);
        break;
    case 4:
        if (hostfd[k] >= 0)
            shutdown(hostfd[k], SHUT_WR);
        break;
    case 5:
        set(acc, k, accept4(service, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC));
        break;
    case 6:
        set(acc, k, -1);
        break;
    default:
        if (hostfd[k] >= 0)
            while (recv(hostfd[k], buf, sizeof(buf), MSG_DONTWAIT) > 0)
                ;
        if (acc[k] >= 0)
            while (recv(acc[k], buf, sizeof(buf), MSG_DONTWAIT) > 0)
                ;
        break;
    }
}

static void once(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(uds, sizeof(uds), "/tmp/kvmvm-fuzz-vsock-%d.sock", (int)getpid());
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s_5000", uds);
    unlink(sa.sun_path);
    service = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (service < 0 || bind(service, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(service, 64) < 0)
        abort();
    for (int i = 0; i < NHOST; i++)
        hostfd[i] = acc[i] = -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };
    static const struct fuzz_queue q[3] = {
        { 0x1000, 0x2000, 0x3000, 32 }, { 0x4000, 0x5000, 0x6000, 32 },
        { 0x7000, 0x8000, 0x9000, 4 },
    };

    if (service < 0)
        once();
    unlink(uds);
    struct kvmvm_vm *vm = fuzz_vm_new();
    if (kvmvm_vm_add_virtio_vsock(vm, FUZZ_MMIO, 5, 0, 3 + in_u8(&in) % 2, uds) < 0)
        abort();
    struct virtio_dev *d = fuzz_driver_setup(vm, 0, q, 3);
    if (d)
        fuzz_drive(vm, d, q, 3, &in, 64, backend);
    fuzz_vm_free(vm);
    for (int i = 0; i < NHOST; i++) {
        set(hostfd, i, -1);
        set(acc, i, -1);
    }
    while (1) {     /* connections the guest opened that nobody accepted */
        int fd = accept4(service, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0)
            break;
        close(fd);
    }
    return 0;
}
