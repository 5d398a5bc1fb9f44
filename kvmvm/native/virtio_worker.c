/*
 * One worker thread per active virtio device: it sleeps in epoll on the queues' kick
 * eventfds (fed by KVM ioeventfds or by the exit path), the device's backend fds and a
 * stop eventfd, and runs the device's data path without the GIL or a vCPU. A device
 * marked broken stops being serviced until the driver resets it.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "virtio.h"

/* On a stop_fd event: 1 when it was a pause (the worker slept until resumed), 0 to end */
static int worker_parks(struct virtio_dev *d)
{
    pthread_mutex_lock(&d->park_lock);
    if (!d->park_req) {
        pthread_mutex_unlock(&d->park_lock);
        return 0;
    }
    uint64_t cnt;
    if (read(d->stop_fd, &cnt, sizeof(cnt)) < 0) { /* EAGAIN: already consumed */ }
    d->parked = 1;
    pthread_cond_broadcast(&d->park_cond);
    while (d->park_req)
        pthread_cond_wait(&d->park_cond, &d->park_lock);
    d->parked = 0;
    pthread_mutex_unlock(&d->park_lock);
    return 1;
}

static void wait_for_stop(struct virtio_dev *d)
{
    struct pollfd p = { .fd = d->stop_fd, .events = POLLIN };
    while (!virtio_stopping(d)) {
        if (poll(&p, 1, -1) < 0 && errno == EINTR)
            continue;
        if (!worker_parks(d))
            return;
    }
}

static void kick(struct virtio_dev *d, int q)
{
    uint64_t cnt = 0;
    if (read(d->kick_fd[q], &cnt, sizeof(cnt)) == sizeof(cnt))
        atomic_fetch_add_explicit(&d->kicks, cnt, memory_order_relaxed);
    if (d->q[q].size)
        d->ops->queue_notify(d, q);
}

static void *worker_main(void *arg)
{
    struct virtio_dev *d = arg;
    sigset_t set;
    sigfillset(&set);
    pthread_sigmask(SIG_SETMASK, &set, NULL);

    /* kicks may have come before DRIVER_OK: look at every queue once */
    pthread_mutex_lock(&d->dp_lock);
    for (int q = 0; q < d->ops->nqueues && !virtio_broken(d) && !virtio_stopping(d); q++)
        if (d->q[q].size)
            d->ops->queue_notify(d, q);
    pthread_mutex_unlock(&d->dp_lock);
    while (!virtio_stopping(d)) {
        struct epoll_event ev[16];
        if (virtio_broken(d)) {
            wait_for_stop(d);
            break;
        }
        int tmo = d->ops->timeout_ms ? d->ops->timeout_ms(d) : -1;
        int n = epoll_wait(d->ep_fd, ev, 16, tmo);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            virtio_set_broken(d, "worker: epoll_wait failed");
            continue;
        }
        pthread_mutex_lock(&d->dp_lock);
        for (int i = 0; i < n && !virtio_broken(d) && !virtio_stopping(d); i++) {
            uint64_t tag = ev[i].data.u64;
            if (tag == VIRTIO_TAG_STOP) {
                /* a pause parks here, outside the data-path lock; a stop ends the loop */
                pthread_mutex_unlock(&d->dp_lock);
                int parked = worker_parks(d);
                pthread_mutex_lock(&d->dp_lock);
                if (parked)
                    continue;
                break;
            }
            if (tag < (uint64_t)d->ops->nqueues)
                kick(d, (int)tag);
            else if (d->ops->fd_event)
                d->ops->fd_event(d, tag, ev[i].events);
        }
        if (d->ops->idle)
            d->ops->idle(d);
        pthread_mutex_unlock(&d->dp_lock);
    }
    return NULL;
}

int virtio_worker_watch(struct virtio_dev *d, int fd, uint32_t events, uint64_t tag)
{
    struct epoll_event ev = { .events = events, .data.u64 = tag };
    return epoll_ctl(d->ep_fd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int virtio_worker_modify(struct virtio_dev *d, int fd, uint32_t events, uint64_t tag)
{
    struct epoll_event ev = { .events = events, .data.u64 = tag };
    return epoll_ctl(d->ep_fd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
}

void virtio_worker_unwatch(struct virtio_dev *d, int fd)
{
    epoll_ctl(d->ep_fd, EPOLL_CTL_DEL, fd, NULL);
}

int virtio_worker_start(struct virtio_dev *d)
{
    int rc;
    d->ep_fd = epoll_create1(EPOLL_CLOEXEC);
    d->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (d->ep_fd < 0 || d->stop_fd < 0) {
        rc = -errno;
        goto fail;
    }
    if ((rc = virtio_worker_watch(d, d->stop_fd, EPOLLIN, VIRTIO_TAG_STOP)) < 0)
        goto fail;
    for (int q = 0; q < d->ops->nqueues; q++)
        if ((rc = virtio_worker_watch(d, d->kick_fd[q], EPOLLIN, (uint64_t)q)) < 0)
            goto fail;
    if (d->ops->activate && (rc = d->ops->activate(d)) < 0)
        goto fail;
    rc = -pthread_create(&d->worker, NULL, worker_main, d);
    if (rc < 0) {
        if (d->ops->deactivate)
            d->ops->deactivate(d);
        goto fail;
    }
    d->running = 1;
    return 0;
fail:
    if (d->ep_fd >= 0)
        close(d->ep_fd);
    if (d->stop_fd >= 0)
        close(d->stop_fd);
    d->ep_fd = d->stop_fd = -1;
    return rc;
}

void virtio_worker_park(struct virtio_dev *d, int park)
{
    if (!d->running)
        return;
    pthread_mutex_lock(&d->park_lock);
    d->park_req = park;
    if (park) {
        uint64_t one = 1;
        if (write(d->stop_fd, &one, sizeof(one)) < 0) { /* cannot fail on a fresh eventfd */ }
        while (!d->parked)
            pthread_cond_wait(&d->park_cond, &d->park_lock);
    } else {
        pthread_cond_broadcast(&d->park_cond);
    }
    pthread_mutex_unlock(&d->park_lock);
}

void virtio_worker_stop(struct virtio_dev *d)
{
    if (!d->running)
        return;
    virtio_worker_park(d, 0);   /* a parked worker wakes and sees the stop */
    uint64_t one = 1;
    /* the flag ends a drain pass at the next chain; the eventfd wakes epoll */
    atomic_store(&d->stopping, 1);
    if (write(d->stop_fd, &one, sizeof(one)) < 0) { /* cannot fail on a fresh eventfd */ }
    pthread_join(d->worker, NULL);
    atomic_store(&d->stopping, 0);
    close(d->ep_fd);
    close(d->stop_fd);
    d->ep_fd = d->stop_fd = -1;
    d->running = 0;
}
