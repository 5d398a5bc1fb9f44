/*
 * The one drain loop of every virtio device: pop -> handle -> push -> notify, bounded.
 * A pass takes at most one queue's worth of chains and VIRTIO_PASS_BYTES of data and
 * checks the stop flag before each chain; what is left is picked up after the worker went
 * back to epoll (the queue's kick eventfd is re-armed), where a stop request is seen too.
 */
#include <errno.h>
#include <unistd.h>

#include "virtio.h"

int virtio_stopping(struct virtio_dev *d)
{
    return atomic_load_explicit(&d->stopping, memory_order_relaxed);
}

void virtio_rearm(struct virtio_dev *d, int q)
{
    uint64_t one = 1;
    if (d->kick_fd[q] >= 0 && write(d->kick_fd[q], &one, sizeof(one)) < 0) {
        /* the counter is full: a wake-up is pending anyway */
    }
}

int virtio_drain(struct virtio_dev *d, int qi, virtio_handler fn, void *arg)
{
    struct virtq *q = &d->q[qi];
    struct virtq_chain *c = d->chain;
    uint64_t bytes = 0;
    int done = 0, rc = 0, why = DRAIN_EMPTY;
    int budget = q->size;

    if (virtio_broken(d))
        return DRAIN_BROKEN;
    for (;;) {
        if (virtio_stopping(d)) {
            why = DRAIN_STOP;
            break;
        }
        if (done >= budget || bytes >= VIRTIO_PASS_BYTES) {
            why = DRAIN_BUDGET;
            break;
        }
        rc = virtq_pop(q, c);
        if (rc <= 0) {
            why = rc < 0 ? DRAIN_BROKEN : DRAIN_EMPTY;
            break;
        }
        int64_t len = fn(d, c, arg);
        if (len == VIRTIO_RETRY) {
            virtq_unpop(q);
            why = DRAIN_RETRY;
            break;
        }
        if (len < 0 || (uint64_t)len > c->in_len)
            len = 0;    /* a handler never claims more than the chain could take */
        virtq_push(q, c->head, (uint32_t)len);
        atomic_fetch_add_explicit(&d->requests, 1, memory_order_relaxed);
        bytes += c->out_len + c->in_len;
        done++;
    }
    if (why == DRAIN_BROKEN && rc < 0)
        virtio_bad_chain(d, qi, rc);
    if (done && !virtio_broken(d))
        virtio_queue_done(d, qi);
    if (why == DRAIN_BUDGET)
        virtio_rearm(d, qi);
    return why;
}
