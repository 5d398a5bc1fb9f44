/*
 * The snapshot state loader: kvmvm_vm_load_state over a state stream from the fuzzer (a
 * snapshot's state file, which the guest influenced), into a fake VM with a UART and one
 * virtio-mmio device (rng, blk, net or vsock) whose guest RAM already holds an image from
 * the fuzzer. Section framing (state.c), the serial load and the virtio transport and queue
 * load (virtio_state.c, each device's restored hook and activation) all run. A state that
 * loads must be one the device could have reached through its registers; then the device
 * is exercised a little: UART port accesses, queue notifies, register reads and writes and
 * worker rounds (env.c's fuzz_drive), so that accepted but inconsistent state shows.
 *
 * Input: u8 device, u8 flags (serial output, serial thread, vCPUs, irqchip), u16 n + n bytes of RAM image (at GPA 0), u32 n + n bytes of
 * state stream, then the exercise script. KVMVM_FUZZ_STATE_SEEDS=DIR writes, at start-up,
 * seed inputs whose streams were saved from well-driven devices (tests/fuzz/corpus/state/).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "env.h"
#include "api_state.h"

#define SERIAL_PORT 0x3f8

static int devnull = -1, memfd = -1;
static char uds[96];

/* the rings a well-behaved driver set up (the seeds), per queue */
static const struct fuzz_queue layout[VIRTIO_MAX_QUEUES] = {
    { 0x1000, 0x2000, 0x3000, 32 }, { 0x4000, 0x5000, 0x6000, 32 },
    { 0x7000, 0x8000, 0x9000, 4 }, { 0xa000, 0xb000, 0xc000, 8 },
};

static struct kvmvm_vm *machine(int kind, int serial_out)
{
    static const uint8_t mac[6] = { 0x52, 0x54, 0, 0x12, 0x34, 0x56 };
    char path[64];
    int rc;

    struct kvmvm_vm *vm = fuzz_vm_new();
    if (kvmvm_vm_add_serial(vm, SERIAL_PORT, 4, serial_out ? devnull : -1, -1) < 0)
        abort();
    switch (kind) {
    case 0:
        rc = kvmvm_vm_add_virtio_rng(vm, FUZZ_MMIO, 5, 0);
        break;
    case 1:
        if (ftruncate(memfd, 0) < 0 || ftruncate(memfd, 16384) < 0)
            abort();
        snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
        rc = kvmvm_vm_add_virtio_blk(vm, FUZZ_MMIO, 5, 0, path, 0, "state");
        break;
    case 2: {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
            abort();
        close(sv[1]);
        rc = virtio_net_add_fd(vm, FUZZ_MMIO, 5, 0, sv[0], mac);
        break;
    }
    default:
        unlink(uds);
        rc = kvmvm_vm_add_virtio_vsock(vm, FUZZ_MMIO, 5, 0, 3, uds);
        break;
    }
    if (rc < 0)
        abort();
    return vm;
}

static void once(void)
{
    if ((devnull = open("/dev/null", O_WRONLY | O_CLOEXEC)) < 0 ||
        (memfd = memfd_create("fuzz-state", 0)) < 0)
        abort();
    snprintf(uds, sizeof(uds), "/tmp/kvmvm-fuzz-state-%d.sock", (int)getpid());
}

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_state: a loaded state the registers could never reach: %s\n", what);
    abort();
}

/* what the transport guarantees of a device driven through its registers (virtio_mmio.c) */
static void check_reachable(struct virtio_dev *d)
{
    unsigned st = atomic_load(&d->status);
    if (virtio_broken(d))
        return;         /* a broken device does nothing until reset */
    if ((st & VIRTIO_STATUS_FEATURES_OK) &&
        ((d->drv_features & ~d->dev_features) || !(d->drv_features & (1ull << VIRTIO_F_VERSION_1))))
        fail("FEATURES_OK with features the device did not offer, or without VERSION_1");
    if ((st & VIRTIO_STATUS_DRIVER_OK) && !(st & VIRTIO_STATUS_FEATURES_OK))
        fail("DRIVER_OK without FEATURES_OK");
    if (!!(st & VIRTIO_STATUS_DRIVER_OK) != !!d->running)
        fail("DRIVER_OK and the worker disagree");
    for (int i = 0; i < d->ops->nqueues; i++) {
        if (d->qnum[i] > d->ops->queue_max)
            fail("queue size above the maximum");
        if (d->qready[i] && (!d->q[i].size || d->q[i].size != d->qnum[i]))
            fail("a ready queue without rings");
    }
}

/* the seeds: streams saved from devices a well-behaved driver set up */
static void write_seeds(const char *dir)
{
    for (int kind = 0; kind < 4; kind++) {
        for (int all = 0; all < 2; all++) {
            struct kvmvm_vm *vm = machine(kind, 1);
            struct virtio_dev *d = virtio_find(vm, FUZZ_MMIO);
            uint8_t lcr = 0x03, ier = 0x0f, scr = (uint8_t)(kind * 2 + all);
            bus_dispatch(&vm->pio, SERIAL_PORT + 3, 1, &lcr, 1);
            bus_dispatch(&vm->pio, SERIAL_PORT + 1, 1, &ier, 1);
            bus_dispatch(&vm->pio, SERIAL_PORT + 7, 1, &scr, 1);
            uint64_t feat = all ? d->dev_features : 0;
            if (!fuzz_driver_setup(vm, feat, layout, d->ops->nqueues))
                abort();
            struct state_buf b = { 0 };
            if (serial_save(vm->serial, &b) < 0 || virtio_save_all(vm, &b) < 0)
                abort();
            state_put(&b, KVMVM_SEC_END, 0, 1, NULL, 0);
            if (b.err)
                abort();
            char path[512];
            snprintf(path, sizeof(path), "%s/seed-%s%s", dir, d->ops->name, all ? "-features" : "");
            FILE *f = fopen(path, "wb");
            if (!f)
                abort();
            uint16_t img = 0;       /* the rings are all zero, as in a fresh RAM */
            uint32_t len = (uint32_t)b.len;
            uint8_t hdr[2] = { (uint8_t)kind, 3 };
            /* exercise: kick each queue, run the worker, read the status, read the UART */
            uint8_t script[] = { 0, 0x10, 0x20, 2, 7, 0x1c, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
            fwrite(hdr, 1, 2, f);
            fwrite(&img, 2, 1, f);
            fwrite(fuzz_ram(vm), 1, img, f);
            fwrite(&len, 4, 1, f);
            fwrite(b.p, 1, b.len, f);
            fwrite(script, 1, sizeof(script), f);
            if (fclose(f) != 0)
                abort();
            free(b.p);
            fuzz_vm_free(vm);
        }
    }
    unlink(uds);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    once();
    const char *dir = getenv("KVMVM_FUZZ_STATE_SEEDS");
    if (dir)
        write_seeds(dir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };
    const char *what = NULL;

    int kind = in_u8(&in) % 4;
    uint8_t flags = in_u8(&in);
    struct kvmvm_vm *vm = machine(kind, flags & 1);
    struct virtio_dev *d = virtio_find(vm, FUZZ_MMIO);
    /* vCPUs and an irqchip for the framing and size checks of their sections; their
       KVM_SET_* ioctls fail on the fake fd (EBADF), which ends that load */
    vm->nr_vcpus = 1 + ((flags >> 2) & 1);
    for (int i = 0; i < vm->nr_vcpus; i++)
        vm->vcpus[i] = (struct vcpu){ .id = i, .fd = -1, .vm = vm };
    vm->caps.irqchip = vm->has_pit = (flags >> 3) & 1;

    uint16_t img = in_u16(&in);
    in_bytes(&in, fuzz_ram(vm), img);       /* at most 64 KiB: inside RAM */
    uint32_t len = in_u32(&in);
    if (len > in.n)
        len = (uint32_t)in.n;
    /* a copy of just the stream, so that ASan sees any read past its end */
    uint8_t *stream = malloc(len ? len : 1);
    if (!stream)
        abort();
    in_bytes(&in, stream, len);
    int rc = kvmvm_vm_load_state(vm, stream, len, &what);
    free(stream);
    if (!what)
        fail("no section named on return");
    if (rc > 0)
        fail("a positive return");
    if (rc == 0) {
        check_reachable(d);
        if (flags & 2)
            serial_start(vm->serial);
        for (int op = 0; op < 16 && in.n > 0; op++) {
            uint8_t k = in_u8(&in);
            uint8_t v = in_u8(&in);
            bus_dispatch(&vm->pio, SERIAL_PORT + (k & 7), (k >> 3) & 1, &v, 1);
        }
        /* the queues the state set up, or the seeds' layout where it set up none */
        struct fuzz_queue q[VIRTIO_MAX_QUEUES];
        for (int i = 0; i < d->ops->nqueues; i++) {
            q[i] = layout[i];
            if (d->q[i].size)
                q[i] = (struct fuzz_queue){ d->q[i].desc_gpa, d->q[i].avail_gpa,
                                            d->q[i].used_gpa, d->q[i].size };
        }
        fuzz_drive(vm, d, q, d->ops->nqueues, &in, 32, NULL);
    }
    fuzz_vm_free(vm);
    return 0;
}
