/*
 * Snapshot state of the virtio-mmio transport: negotiated features, status, interrupt
 * status and every queue's size, addresses and indices (version 1). A device's backend is
 * not state: blk reopens its file, net its TAP, vsock its listening socket (its streams
 * are reset, as Firecracker does). Pausing parks each device's worker between batches:
 * a request is either wholly done (in the used ring) or not started (still available).
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "virtio.h"
#include "api_state.h"

struct vq_state {
    uint16_t num, ready, last_avail, used_idx;
    uint64_t desc, avail, used;
};

struct virtio_state {
    uint32_t device_id, nqueues;
    uint64_t dev_features, drv_features;
    uint32_t dev_feat_sel, drv_feat_sel, queue_sel, status, isr, config_generation;
    struct vq_state q[VIRTIO_MAX_QUEUES];
    char broken_why[96];
};

/* every virtio transport on the VM's MMIO bus, in address order */
static int for_each_virtio(struct kvmvm_vm *vm, struct virtio_dev **out, int max)
{
    int n = 0;
    pthread_rwlock_rdlock(&vm->mmio.lock);
    for (int i = 0; i < vm->mmio.nr && n < max; i++) {
        struct virtio_dev *d = virtio_of(vm->mmio.ranges[i].dev);
        if (d)
            out[n++] = d;
    }
    pthread_rwlock_unlock(&vm->mmio.lock);
    return n;
}

int virtio_any(struct kvmvm_vm *vm)
{
    struct virtio_dev *d;
    return for_each_virtio(vm, &d, 1) > 0;
}

int virtio_save_all(struct kvmvm_vm *vm, struct state_buf *b)
{
    struct virtio_dev *devs[32];
    int n = for_each_virtio(vm, devs, 32);
    for (int k = 0; k < n; k++) {
        struct virtio_dev *d = devs[k];
        struct virtio_state st;
        memset(&st, 0, sizeof(st));
        pthread_mutex_lock(&d->lock);
        st.device_id = d->ops->device_id;
        st.nqueues = d->ops->nqueues;
        st.dev_features = d->dev_features;
        st.drv_features = d->drv_features;
        st.dev_feat_sel = d->dev_feat_sel;
        st.drv_feat_sel = d->drv_feat_sel;
        st.queue_sel = d->queue_sel;
        st.status = atomic_load(&d->status);
        st.isr = atomic_load(&d->isr);
        st.config_generation = d->config_generation;
        for (int i = 0; i < d->ops->nqueues; i++) {
            st.q[i] = (struct vq_state){ d->qnum[i], (uint16_t)d->qready[i], d->q[i].last_avail,
                                         d->q[i].used_idx, d->qaddr[i][0], d->qaddr[i][1],
                                         d->qaddr[i][2] };
        }
        memcpy(st.broken_why, d->broken_why, sizeof(st.broken_why));
        pthread_mutex_unlock(&d->lock);
        state_put(b, KVMVM_SEC_VIRTIO, (uint32_t)d->base, 1, &st, sizeof(st));
    }
    return 0;
}

/* A state the transport could never reach through its registers (virtio_mmio.c): refused,
   as the state file is the guest's as much as the host's. 0 or -EBADMSG. */
static int state_problem(const struct virtio_dev *d, const struct virtio_state *st)
{
    unsigned need_ok = VIRTIO_STATUS_DRIVER_OK | VIRTIO_STATUS_NEEDS_RESET;
    if (st->isr & ~(uint32_t)(VIRTIO_INT_VRING | VIRTIO_INT_CONFIG))
        return -EBADMSG;
    /* features are fixed once FEATURES_OK: a subset of the offer, the modern interface */
    if ((st->status & VIRTIO_STATUS_FEATURES_OK) &&
        ((st->drv_features & ~d->dev_features) ||
         !(st->drv_features & (1ull << VIRTIO_F_VERSION_1))))
        return -EBADMSG;
    /* DRIVER_OK without FEATURES_OK leaves the device broken, never running */
    if ((st->status & need_ok) == VIRTIO_STATUS_DRIVER_OK &&
        !(st->status & VIRTIO_STATUS_FEATURES_OK))
        return -EBADMSG;
    for (int i = 0; i < d->ops->nqueues; i++)
        if (st->q[i].num > d->ops->queue_max || st->q[i].ready > 1)
            return -EBADMSG;
    return 0;
}

int virtio_load(struct kvmvm_vm *vm, uint32_t index, const void *data, uint32_t len)
{
    struct virtio_state st;
    struct virtq q[VIRTIO_MAX_QUEUES];
    struct virtio_dev *d = virtio_find(vm, index);
    int rc = 0;

    if (len != sizeof(st))
        return -EBADMSG;
    memcpy(&st, data, sizeof(st));
    if (!d || d->ops->device_id != st.device_id || (uint32_t)d->ops->nqueues != st.nqueues)
        return -ENODEV;     /* the machine was built with other devices */
    if (st.dev_features != d->dev_features)
        return -EPROTO;
    if ((rc = state_problem(d, &st)) < 0)
        return rc;
    /* every ready queue's rings inside guest memory, before anything changes */
    for (int i = 0; i < d->ops->nqueues; i++) {
        struct vq_state *s = &st.q[i];
        memset(&q[i], 0, sizeof(q[i]));
        if (s->ready && (rc = virtq_setup(&q[i], d->mem, s->num, s->desc, s->avail, s->used)) < 0)
            return rc;
        q[i].last_avail = s->last_avail;
        q[i].used_idx = s->used_idx;
    }
    pthread_mutex_lock(&d->lock);
    if (d->running) {       /* a second section for the same device */
        pthread_mutex_unlock(&d->lock);
        return -EBADMSG;
    }
    d->drv_features = st.drv_features;
    d->dev_feat_sel = st.dev_feat_sel;
    d->drv_feat_sel = st.drv_feat_sel;
    d->queue_sel = st.queue_sel;
    d->config_generation = st.config_generation;
    memcpy(d->broken_why, st.broken_why, sizeof(d->broken_why));
    d->broken_why[sizeof(d->broken_why) - 1] = 0;
    for (int i = 0; i < d->ops->nqueues; i++) {
        d->qnum[i] = st.q[i].num;
        d->qaddr[i][0] = st.q[i].desc;
        d->qaddr[i][1] = st.q[i].avail;
        d->qaddr[i][2] = st.q[i].used;
        d->q[i] = q[i];
        d->qready[i] = st.q[i].ready;
    }
    atomic_store(&d->status, st.status);
    atomic_store(&d->isr, st.isr);
    if ((st.status & VIRTIO_STATUS_DRIVER_OK) && !virtio_broken(d)) {
        if (d->ops->restored)
            d->ops->restored(d);
        rc = virtio_worker_start(d);
    }
    if (rc == 0 && atomic_load(&d->isr))
        virtio_interrupt(d, 0);     /* the guest had not acknowledged it yet */
    pthread_mutex_unlock(&d->lock);
    return rc;
}

void virtio_park_all(struct kvmvm_vm *vm, int park)
{
    struct virtio_dev *devs[32];
    int n = for_each_virtio(vm, devs, 32);
    for (int k = 0; k < n; k++) {
        pthread_mutex_lock(&devs[k]->lock);
        virtio_worker_park(devs[k], park);
        pthread_mutex_unlock(&devs[k]->lock);
    }
}
