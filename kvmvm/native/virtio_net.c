/*
 * virtio-net (device 1) over a TAP device opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR:
 * the 12-byte virtio_net_hdr travels unchanged between the rings and the TAP. No offloads,
 * so every frame fits the MTU. The TAP is watched for input only while the guest has
 * receive buffers posted; otherwise it would wake the worker for nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/if_tun.h>

#include "virtio.h"

#define VIRTIO_NET_F_MAC     5
#define VIRTIO_NET_F_STATUS  16
#define NET_HDR_LEN          12     /* virtio_net_hdr_v1 (virtio 1.x always has num_buffers) */
#define NET_QUEUE_MAX        256
#define RXQ                  0
#define TXQ                  1
#define TAP_TAG              0x10000

struct net {
    int tap_fd;
    int rx_watching;
    uint8_t mac[6];
    struct iovec iov[VIRTQ_MAX_SEGS];
};

static void net_config_read(struct virtio_dev *d, uint32_t off, uint8_t *data, uint32_t len)
{
    struct net *n = d->priv;
    uint8_t cfg[8] = { 0 };
    memcpy(cfg, n->mac, 6);
    cfg[6] = 1;     /* VIRTIO_NET_S_LINK_UP */
    memcpy(data, cfg + off, len);
}

static void rx_watch(struct virtio_dev *d, struct net *n, int on)
{
    if (n->rx_watching == on)
        return;
    n->rx_watching = on;
    virtio_worker_modify(d, n->tap_fd, on ? EPOLLIN : 0, TAP_TAG);
}

/* move frames from the TAP into posted receive buffers */
static void net_rx(struct virtio_dev *d, struct net *n)
{
    struct virtq *q = &d->q[RXQ];
    struct virtq_chain *c = d->chain;
    int rc, done = 0;

    while ((rc = virtq_pop(q, c)) > 0) {
        int cnt = chain_iov(c, 1, 0, c->in_len, n->iov, VIRTQ_MAX_SEGS);
        ssize_t r = c->in_len >= NET_HDR_LEN ? readv(n->tap_fd, n->iov, cnt) : -2;
        if (r == -2) {      /* a buffer too small for the header: hand it back unused */
            virtq_push(q, c->head, 0);
            done++;
            continue;
        }
        if (r < 0) {
            virtq_unpop(q);
            break;          /* EAGAIN: nothing more to read */
        }
        virtq_push(q, c->head, (uint32_t)r);
        atomic_fetch_add_explicit(&d->requests, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&d->bytes_in, (uint64_t)r, memory_order_relaxed);
        done++;
    }
    if (rc < 0) {
        virtio_bad_chain(d, RXQ, rc);
        return;
    }
    rx_watch(d, n, rc > 0);     /* rc == 0: out of buffers, wait for the guest's kick */
    if (done)
        virtio_queue_done(d, RXQ);
}

static void net_tx(struct virtio_dev *d, struct net *n)
{
    struct virtq *q = &d->q[TXQ];
    struct virtq_chain *c = d->chain;
    int rc, done = 0;

    while ((rc = virtq_pop(q, c)) > 0) {
        if (c->out_len > NET_HDR_LEN) {
            int cnt = chain_iov(c, 0, 0, c->out_len, n->iov, VIRTQ_MAX_SEGS);
            /* a full TAP queue drops the frame, as a wire would */
            if (writev(n->tap_fd, n->iov, cnt) > 0)
                atomic_fetch_add_explicit(&d->bytes_out, c->out_len - NET_HDR_LEN,
                                          memory_order_relaxed);
        }
        virtq_push(q, c->head, 0);
        atomic_fetch_add_explicit(&d->requests, 1, memory_order_relaxed);
        done++;
    }
    if (rc < 0)
        virtio_bad_chain(d, TXQ, rc);
    else if (done)
        virtio_queue_done(d, TXQ);
}

static void net_notify(struct virtio_dev *d, int q)
{
    if (q == TXQ)
        net_tx(d, d->priv);
    else if (q == RXQ)
        net_rx(d, d->priv);
}

static void net_fd_event(struct virtio_dev *d, uint64_t tag, uint32_t events)
{
    if (tag == TAP_TAG)
        net_rx(d, d->priv);
}

static int net_activate(struct virtio_dev *d)
{
    struct net *n = d->priv;
    n->rx_watching = 1;
    return virtio_worker_watch(d, n->tap_fd, EPOLLIN, TAP_TAG);
}

static void net_destroy(struct virtio_dev *d)
{
    struct net *n = d->priv;
    if (!n)
        return;
    if (n->tap_fd >= 0)
        close(n->tap_fd);   /* a TAP that TUNSETIFF created (not persistent) goes away here */
    free(n);
}

static const struct virtio_dev_ops net_ops = {
    .name = "virtio-net",
    .device_id = KVMVM_VIRTIO_ID_NET,
    .nqueues = 2,
    .queue_max = NET_QUEUE_MAX,
    .config_len = 8,
    .config_read = net_config_read,
    .activate = net_activate,
    .queue_notify = net_notify,
    .fd_event = net_fd_event,
    .destroy = net_destroy,
};

static int tap_open(const char *name)
{
    struct ifreq ifr;
    int hdr = NET_HDR_LEN;
    if (!name || !*name || strlen(name) >= IFNAMSIZ)
        return -EINVAL;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    memset(&ifr, 0, sizeof(ifr));
    memcpy(ifr.ifr_name, name, strlen(name));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0 || ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0 ||
        ioctl(fd, TUNSETOFFLOAD, 0) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

int kvmvm_vm_add_virtio_net(kvmvm_vm *vm, uint64_t base, int irq, int flags,
                            const char *tap, const uint8_t *mac)
{
    struct net *n = calloc(1, sizeof(*n));
    if (!n)
        return -ENOMEM;
    n->tap_fd = tap_open(tap);
    if (n->tap_fd < 0) {
        int e = n->tap_fd;
        free(n);
        return e;
    }
    memcpy(n->mac, mac, 6);
    return virtio_mmio_add(vm, base, irq, flags, &net_ops, n, 1ull << VIRTIO_NET_F_MAC);
}
