/*
 * The virtio-mmio transport (version 2, virtio 1.x) wrapping any virtio device:
 * registers 0x000-0x0ff, the device's config space at 0x100+. Feature negotiation,
 * queue setup, interrupt status/ack, reset and DEVICE_NEEDS_RESET live here; the
 * data path runs on the device's worker thread (virtio_worker.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "virtio.h"

#define REG_MAGIC           0x000
#define REG_VERSION         0x004
#define REG_DEVICE_ID       0x008
#define REG_VENDOR_ID       0x00c
#define REG_DEV_FEATURES    0x010
#define REG_DEV_FEAT_SEL    0x014
#define REG_DRV_FEATURES    0x020
#define REG_DRV_FEAT_SEL    0x024
#define REG_QUEUE_SEL       0x030
#define REG_QUEUE_NUM_MAX   0x034
#define REG_QUEUE_NUM       0x038
#define REG_QUEUE_READY     0x044
#define REG_QUEUE_NOTIFY    0x050
#define REG_INT_STATUS      0x060
#define REG_INT_ACK         0x064
#define REG_STATUS          0x070
#define REG_QUEUE_DESC_LO   0x080
#define REG_QUEUE_DESC_HI   0x084
#define REG_QUEUE_AVAIL_LO  0x090
#define REG_QUEUE_AVAIL_HI  0x094
#define REG_QUEUE_USED_LO   0x0a0
#define REG_QUEUE_USED_HI   0x0a4
#define REG_SHM_LEN_LO      0x0b0
#define REG_SHM_LEN_HI      0x0b4
#define REG_SHM_BASE_LO     0x0b8
#define REG_SHM_BASE_HI     0x0bc
#define REG_CONFIG_GEN      0x0fc
#define REG_CONFIG          0x100

#define VIRTIO_MMIO_MAGIC   0x74726976  /* "virt" */
#define VIRTIO_VENDOR_ID    0x4d564b56  /* "VKVM" */

static void lower_irq(struct virtio_dev *d);

void virtio_interrupt(struct virtio_dev *d, uint32_t why)
{
    atomic_fetch_or(&d->isr, why);
    atomic_fetch_add_explicit(&d->interrupts, 1, memory_order_relaxed);
    if (d->irq_fd >= 0) {
        uint64_t one = 1;
        if (write(d->irq_fd, &one, sizeof(one)) < 0) { /* counter full: already pending */ }
        return;
    }
    if (!d->vm)
        return;
    pthread_mutex_lock(&d->irq_lock);
    if (!d->irq_level && atomic_load(&d->isr)) {
        d->irq_level = 1;
        kvmvm_vm_irq_line(d->vm, d->irq, 1);
    }
    pthread_mutex_unlock(&d->irq_lock);
}

static void lower_irq(struct virtio_dev *d)
{
    if (d->irq_fd >= 0 || !d->vm)
        return;
    pthread_mutex_lock(&d->irq_lock);
    if (d->irq_level && !atomic_load(&d->isr)) {
        d->irq_level = 0;
        kvmvm_vm_irq_line(d->vm, d->irq, 0);
    }
    pthread_mutex_unlock(&d->irq_lock);
}

int virtio_broken(struct virtio_dev *d)
{
    return !!(atomic_load(&d->status) & VIRTIO_STATUS_NEEDS_RESET);
}

void virtio_set_broken(struct virtio_dev *d, const char *why)
{
    unsigned old = atomic_fetch_or(&d->status, VIRTIO_STATUS_NEEDS_RESET);
    if (old & VIRTIO_STATUS_NEEDS_RESET)
        return;
    snprintf(d->broken_why, sizeof(d->broken_why), "%s", why);
    virtio_interrupt(d, VIRTIO_INT_CONFIG);
}

void virtio_bad_chain(struct virtio_dev *d, int q, int rc)
{
    char why[96];
    const char *what = rc == -ELOOP ? "descriptor loop or chain longer than the queue"
                     : rc == -EFAULT ? "buffer outside guest memory"
                     : rc == -EMSGSIZE ? "chain longer than the total-length cap"
                     : rc == -E2BIG ? "too many segments"
                     : "malformed descriptor chain";
    snprintf(why, sizeof(why), "queue %d: %s", q, what);
    virtio_set_broken(d, why);
}

void virtio_queue_done(struct virtio_dev *d, int q)
{
    if (virtq_needs_interrupt(&d->q[q]))
        virtio_interrupt(d, VIRTIO_INT_VRING);
}

/* --- reset and activation (called with d->lock held) --- */

static void device_reset(struct virtio_dev *d)
{
    if (d->running) {
        virtio_worker_stop(d);
        if (d->ops->deactivate)
            d->ops->deactivate(d);
    }
    for (int i = 0; i < d->ops->nqueues; i++) {
        memset(&d->q[i], 0, sizeof(d->q[i]));
        d->qnum[i] = d->ops->queue_max;
        d->qready[i] = 0;
        memset(d->qaddr[i], 0, sizeof(d->qaddr[i]));
        uint64_t cnt;   /* drop kicks that were meant for the old rings */
        if (read(d->kick_fd[i], &cnt, sizeof(cnt)) < 0) { /* EAGAIN: none pending */ }
    }
    d->drv_features = 0;
    d->dev_feat_sel = d->drv_feat_sel = d->queue_sel = 0;
    d->broken_why[0] = 0;
    atomic_store(&d->status, 0);
    atomic_store(&d->isr, 0);
    lower_irq(d);
}

static void queue_ready(struct virtio_dev *d, uint32_t qi, uint32_t v)
{
    if (!v) {
        /* the old rings are forgotten at once; a running worker finishes its pass first */
        pthread_mutex_lock(&d->dp_lock);
        memset(&d->q[qi], 0, sizeof(d->q[qi]));
        d->qready[qi] = 0;
        pthread_mutex_unlock(&d->dp_lock);
        return;
    }
    int rc = virtq_setup(&d->q[qi], d->mem, d->qnum[qi], d->qaddr[qi][0], d->qaddr[qi][1],
                         d->qaddr[qi][2]);
    if (rc < 0) {
        char why[96];
        snprintf(why, sizeof(why), "queue %u: %s (size %u desc %#llx avail %#llx used %#llx)",
                 qi, rc == -EFAULT ? "ring outside guest memory" : "bad size or alignment",
                 d->qnum[qi], (unsigned long long)d->qaddr[qi][0],
                 (unsigned long long)d->qaddr[qi][1], (unsigned long long)d->qaddr[qi][2]);
        virtio_set_broken(d, why);
        return;
    }
    d->qready[qi] = 1;
}

static void set_status(struct virtio_dev *d, uint32_t v)
{
    unsigned old = atomic_load(&d->status);
    if (v == 0) {
        device_reset(d);
        return;
    }
    v &= ~VIRTIO_STATUS_NEEDS_RESET;    /* the device's bit, not the driver's */
    if ((v & VIRTIO_STATUS_FEATURES_OK) && !(old & VIRTIO_STATUS_FEATURES_OK)) {
        /* accept only a subset of what we offer, and only the modern interface */
        if ((d->drv_features & ~d->dev_features) ||
            !(d->drv_features & (1ull << VIRTIO_F_VERSION_1)))
            v &= ~VIRTIO_STATUS_FEATURES_OK;
    }
    if ((old & VIRTIO_STATUS_FEATURES_OK) && !(v & VIRTIO_STATUS_FEATURES_OK) && (v & ~old))
        v |= VIRTIO_STATUS_FEATURES_OK;     /* status bits only accumulate until reset */
    atomic_fetch_or(&d->status, v);
    if ((v & VIRTIO_STATUS_DRIVER_OK) && !(old & VIRTIO_STATUS_DRIVER_OK) && !virtio_broken(d)) {
        if (!(v & VIRTIO_STATUS_FEATURES_OK) && !(old & VIRTIO_STATUS_FEATURES_OK)) {
            virtio_set_broken(d, "DRIVER_OK without FEATURES_OK");
            return;
        }
        int rc = virtio_worker_start(d);
        if (rc < 0) {
            char why[96];
            snprintf(why, sizeof(why), "activation failed: %s", strerror(-rc));
            virtio_set_broken(d, why);
        }
    }
}

/* --- register access --- */

static uint32_t reg_read(struct virtio_dev *d, uint64_t off)
{
    uint32_t qi = d->queue_sel;
    int qok = qi < (uint32_t)d->ops->nqueues;
    switch (off) {
    case REG_MAGIC: return VIRTIO_MMIO_MAGIC;
    case REG_VERSION: return 2;
    case REG_DEVICE_ID: return d->ops->device_id;
    case REG_VENDOR_ID: return VIRTIO_VENDOR_ID;
    case REG_DEV_FEATURES:
        return d->dev_feat_sel > 1 ? 0 : (uint32_t)(d->dev_features >> (32 * d->dev_feat_sel));
    case REG_QUEUE_NUM_MAX: return qok ? d->ops->queue_max : 0;
    case REG_QUEUE_READY: return qok ? d->qready[qi] : 0;
    case REG_INT_STATUS: return atomic_load(&d->isr);
    case REG_STATUS: return atomic_load(&d->status);
    case REG_SHM_LEN_LO: case REG_SHM_LEN_HI: return 0xffffffff;  /* no shared memory */
    case REG_CONFIG_GEN: return d->config_generation;
    default: return 0;
    }
}

static void set_addr(struct virtio_dev *d, uint32_t qi, int which, int hi, uint32_t v)
{
    uint64_t *a = &d->qaddr[qi][which];
    *a = hi ? ((*a & 0xffffffffull) | ((uint64_t)v << 32)) : ((*a & ~0xffffffffull) | v);
}

static void reg_write(struct virtio_dev *d, uint64_t off, uint32_t v)
{
    uint32_t qi = d->queue_sel;
    unsigned st = atomic_load(&d->status);
    /* queue registers are frozen once the queue is live or the device is running */
    int qok = qi < (uint32_t)d->ops->nqueues && !d->qready[qi] && !(st & VIRTIO_STATUS_DRIVER_OK);
    int feat_ok = !(st & (VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK));

    switch (off) {
    case REG_DEV_FEAT_SEL: d->dev_feat_sel = v; break;
    case REG_DRV_FEAT_SEL: d->drv_feat_sel = v; break;
    case REG_DRV_FEATURES:
        if (feat_ok && d->drv_feat_sel <= 1) {
            int sh = 32 * d->drv_feat_sel;
            d->drv_features = (d->drv_features & ~(0xffffffffull << sh)) | ((uint64_t)v << sh);
        }
        break;
    case REG_QUEUE_SEL: d->queue_sel = v; break;
    case REG_QUEUE_NUM:
        if (qok)
            d->qnum[qi] = v > d->ops->queue_max ? 0 : v;    /* 0: rejected at QueueReady */
        break;
    case REG_QUEUE_READY:
        /* once DRIVER_OK, a queue can only be switched off (until the device is reset) */
        if (qi < (uint32_t)d->ops->nqueues && !virtio_broken(d) &&
            (!(st & VIRTIO_STATUS_DRIVER_OK) || !v))
            queue_ready(d, qi, v);
        break;
    case REG_QUEUE_NOTIFY:
        if (v < (uint32_t)d->ops->nqueues) {
            uint64_t one = 1;   /* the exit-path form of an ioeventfd */
            if (write(d->kick_fd[v], &one, sizeof(one)) < 0) { /* already signalled */ }
        }
        break;
    case REG_INT_ACK:
        atomic_fetch_and(&d->isr, ~v);
        lower_irq(d);
        break;
    case REG_STATUS: set_status(d, v); break;
    case REG_QUEUE_DESC_LO: if (qok) set_addr(d, qi, 0, 0, v); break;
    case REG_QUEUE_DESC_HI: if (qok) set_addr(d, qi, 0, 1, v); break;
    case REG_QUEUE_AVAIL_LO: if (qok) set_addr(d, qi, 1, 0, v); break;
    case REG_QUEUE_AVAIL_HI: if (qok) set_addr(d, qi, 1, 1, v); break;
    case REG_QUEUE_USED_LO: if (qok) set_addr(d, qi, 2, 0, v); break;
    case REG_QUEUE_USED_HI: if (qok) set_addr(d, qi, 2, 1, v); break;
    default: break;     /* read-only or unknown: ignored, like real hardware */
    }
}

static void mmio_read(struct kvmvm_device *kd, uint64_t off, uint8_t *data, uint32_t len)
{
    struct virtio_dev *d = kd->priv;
    memset(data, 0, len);
    pthread_mutex_lock(&d->lock);
    if (off >= REG_CONFIG) {
        uint64_t co = off - REG_CONFIG;
        if (co < d->ops->config_len && len <= d->ops->config_len - co && d->ops->config_read)
            d->ops->config_read(d, (uint32_t)co, data, len);
    } else if (len == 4 && !(off & 3)) {
        uint32_t v = reg_read(d, off);
        memcpy(data, &v, 4);
    }
    pthread_mutex_unlock(&d->lock);
}

static void mmio_write(struct kvmvm_device *kd, uint64_t off, const uint8_t *data, uint32_t len)
{
    struct virtio_dev *d = kd->priv;
    pthread_mutex_lock(&d->lock);
    if (off >= REG_CONFIG) {
        uint64_t co = off - REG_CONFIG;
        if (co < d->ops->config_len && len <= d->ops->config_len - co && d->ops->config_write)
            d->ops->config_write(d, (uint32_t)co, data, len);
    } else if (len == 4 && !(off & 3)) {
        uint32_t v;
        memcpy(&v, data, 4);
        reg_write(d, off, v);
    }
    pthread_mutex_unlock(&d->lock);
}

static void mmio_destroy(struct kvmvm_device *kd)
{
    struct virtio_dev *d = kd->priv;
    pthread_mutex_lock(&d->lock);
    device_reset(d);
    pthread_mutex_unlock(&d->lock);
    for (int i = 0; i < d->ops->nqueues; i++) {
        if (d->ioeventfd)
            virtio_kvm_ioeventfd(d, i, 0);
        if (d->kick_fd[i] >= 0)
            close(d->kick_fd[i]);
    }
    if (d->irq_fd >= 0) {
        virtio_kvm_irqfd(d, 0);
        close(d->irq_fd);
    }
    if (d->ops->destroy)
        d->ops->destroy(d);
    pages_free(d->chain, sizeof(*d->chain));
    pthread_mutex_destroy(&d->lock);
    pthread_mutex_destroy(&d->irq_lock);
    pthread_mutex_destroy(&d->dp_lock);
    free(d);
}

static const struct device_ops virtio_mmio_ops = {
    .read = mmio_read,
    .write = mmio_write,
    .destroy = mmio_destroy,
};

/* Create the transport around ops/priv and put it on the VM's MMIO bus. On failure the
   device's destroy hook has run (priv is freed). */
int virtio_mmio_add(struct kvmvm_vm *vm, uint64_t base, int irq, int flags,
                    const struct virtio_dev_ops *ops, void *priv, uint64_t features)
{
    struct virtio_dev *d = calloc(1, sizeof(*d));
    int rc = -ENOMEM;
    if (!d) {
        struct virtio_dev tmp = { .ops = ops, .priv = priv };
        if (ops->destroy)
            ops->destroy(&tmp);
        return rc;
    }
    d->dev.name = ops->name;
    d->dev.ops = &virtio_mmio_ops;
    d->dev.vm = vm;
    d->dev.priv = d;
    d->vm = vm;
    d->mem = &vm->mem;
    d->ops = ops;
    d->priv = priv;
    d->base = base;
    d->irq = irq;
    d->flags = flags;
    d->dev_features = features | (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_F_INDIRECT_DESC);
    d->irq_fd = d->ep_fd = d->stop_fd = -1;
    pthread_mutex_init(&d->lock, NULL);
    pthread_mutex_init(&d->irq_lock, NULL);
    pthread_mutex_init(&d->dp_lock, NULL);
    pthread_mutex_init(&d->park_lock, NULL);
    pthread_cond_init(&d->park_cond, NULL);
    for (int i = 0; i < VIRTIO_MAX_QUEUES; i++)
        d->kick_fd[i] = -1;
    if (ops->nqueues > VIRTIO_MAX_QUEUES) { rc = -EINVAL; goto fail; }
    d->chain = pages_alloc(sizeof(*d->chain));
    if (!d->chain)
        goto fail;
    for (int i = 0; i < ops->nqueues; i++) {
        d->qnum[i] = ops->queue_max;
        d->kick_fd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (d->kick_fd[i] < 0) { rc = -errno; goto fail; }
    }
    /* notifications and interrupts bypass the exit path when the host can */
    if (vm->caps.ioeventfd && !(flags & KVMVM_VIRTIO_NO_IOEVENTFD)) {
        int ok = 1;
        for (int i = 0; i < ops->nqueues && ok; i++)
            ok = virtio_kvm_ioeventfd(d, i, 1) == 0;
        d->ioeventfd = 1;   /* so that destroy unregisters what was registered */
        if (!ok) {
            for (int i = 0; i < ops->nqueues; i++)
                virtio_kvm_ioeventfd(d, i, 0);
            d->ioeventfd = 0;
        }
    }
    if (vm->caps.irqfd && vm->caps.irqchip && !(flags & KVMVM_VIRTIO_NO_IRQFD)) {
        d->irq_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (d->irq_fd >= 0 && virtio_kvm_irqfd(d, 1) < 0) {
            close(d->irq_fd);
            d->irq_fd = -1;
        }
    }
    device_reset(d);
    rc = bus_insert(&vm->mmio, base, 0x1000, &d->dev);
    if (rc < 0)
        goto fail;
    return 0;
fail:
    mmio_destroy(&d->dev);
    return rc;
}

struct virtio_dev *virtio_of(struct kvmvm_device *dev)
{
    return dev && dev->ops == &virtio_mmio_ops ? dev->priv : NULL;
}

struct virtio_dev *virtio_find(struct kvmvm_vm *vm, uint64_t base)
{
    struct virtio_dev *found = NULL;
    pthread_rwlock_rdlock(&vm->mmio.lock);
    for (int i = 0; i < vm->mmio.nr; i++) {
        struct bus_range *r = &vm->mmio.ranges[i];
        if (r->base == base && r->dev && r->dev->ops == &virtio_mmio_ops)
            found = r->dev->priv;
    }
    pthread_rwlock_unlock(&vm->mmio.lock);
    return found;
}

int kvmvm_vm_virtio_info(kvmvm_vm *vm, uint64_t base, struct kvmvm_virtio_info *out)
{
    struct virtio_dev *d = virtio_find(vm, base);
    if (!d)
        return -ENODEV;
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&d->lock);
    out->device_id = d->ops->device_id;
    out->status = atomic_load(&d->status);
    out->isr = atomic_load(&d->isr);
    out->ioeventfd = d->ioeventfd;
    out->irqfd = d->irq_fd >= 0;
    out->broken = virtio_broken(d);
    out->driver_features = d->drv_features;
    out->kicks = atomic_load(&d->kicks);
    out->requests = atomic_load(&d->requests);
    out->interrupts = atomic_load(&d->interrupts);
    out->bytes_in = atomic_load(&d->bytes_in);
    out->bytes_out = atomic_load(&d->bytes_out);
    memcpy(out->broken_why, d->broken_why, sizeof(out->broken_why));
    pthread_mutex_unlock(&d->lock);
    return 0;
}
