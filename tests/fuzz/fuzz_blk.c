/*
 * virtio-blk's request parser and I/O against a real (memfd) image, driven through the
 * real virtio-mmio transport by a hostile driver script (env.c's fuzz_drive).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "env.h"

#define IMAGE (64 * 1024)

static int memfd = -1;

static void backend(struct kvmvm_vm *vm, struct virtio_dev *d, struct fuzz_in *in)
{
    (void)vm; (void)d;
    /* the image shrinks or grows under the guest (another process, a full disk...) */
    if (ftruncate(memfd, in_u16(in) & 0xfe00) < 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };
    char path[64];
    static const struct fuzz_queue q[1] = { { 0x1000, 0x2000, 0x3000, 128 } };

    if (memfd < 0 && (memfd = memfd_create("fuzz-blk", 0)) < 0)
        abort();
    if (ftruncate(memfd, 0) < 0 || ftruncate(memfd, IMAGE) < 0)
        abort();
    snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
    struct kvmvm_vm *vm = fuzz_vm_new();
    uint8_t flags = in_u8(&in);
    /* bit 0 read-only, bit 1 direct (O_DIRECT: memfds have it since Linux 6.6; the
       straight, bounce and buffered paths all take turns, as tmpfs reports no alignment) */
    int rc = kvmvm_vm_add_virtio_blk(vm, FUZZ_MMIO, 5, 0, path, flags & 3, "fuzz");
    if (rc == -EOPNOTSUPP)
        rc = kvmvm_vm_add_virtio_blk(vm, FUZZ_MMIO, 5, 0, path, flags & 1, "fuzz");
    if (rc < 0)
        abort();
    uint64_t feat = (uint64_t)in_u32(&in) << 0;
    struct virtio_dev *d = fuzz_driver_setup(vm, feat & ((1u << 9) | (1u << 5) | (1u << 2) | (1u << 28)), q, 1);
    if (d)
        fuzz_drive(vm, d, q, 1, &in, 48, backend);
    fuzz_vm_free(vm);
    return 0;
}
