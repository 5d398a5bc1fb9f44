/* virtio-rng (device 4): every writable byte the driver offers is filled from getrandom. */
#include <errno.h>
#include <sys/random.h>

#include "virtio.h"

static int fill_random(uint8_t *p, uint32_t len)
{
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (uint32_t)n;
    }
    return 0;
}

static int64_t rng_request(struct virtio_dev *d, struct virtq_chain *c, void *arg)
{
    uint64_t total = 0;
    for (int i = c->nout; i < c->nseg; i++) {
        if (fill_random(c->seg[i].hva, c->seg[i].len) < 0)
            break;
        total += c->seg[i].len;
    }
    atomic_fetch_add_explicit(&d->bytes_in, total, memory_order_relaxed);
    return (int64_t)total;
}

static void rng_notify(struct virtio_dev *d, int qi)
{
    virtio_drain(d, qi, rng_request, NULL);
}

static const struct virtio_dev_ops rng_ops = {
    .name = "virtio-rng",
    .device_id = KVMVM_VIRTIO_ID_RNG,
    .nqueues = 1,
    .queue_max = 256,
    .queue_notify = rng_notify,
};

int kvmvm_vm_add_virtio_rng(kvmvm_vm *vm, uint64_t base, int irq, int flags)
{
    return virtio_mmio_add(vm, base, irq, flags, &rng_ops, NULL, 0);
}
