/*
 * virtio-net (device 1) over a TAP device opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR:
 * the 12-byte virtio_net_hdr travels between the rings and the TAP. No offloads, so every
 * frame fits the MTU and the guest's header is replaced with zeros on the way out. The TAP is watched for input only while the guest has
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
#define NET_IOV_MAX          1024   /* what readv/writev take */
#define NET_FRAME_MAX        65550  /* an Ethernet frame of the largest MTU TAP allows */

struct net {
    int tap_fd;
    int rx_watching;
    uint8_t mac[6];
    struct iovec iov[NET_IOV_MAX];
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

/* one frame from the TAP into a posted receive buffer */
static int64_t rx_one(struct virtio_dev *d, struct virtq_chain *c, void *arg)
{
    struct net *n = arg;
    if (c->in_len < NET_HDR_LEN)
        return 0;           /* too small for the header: handed back unused */
    int cnt = chain_iov(c, 1, 0, c->in_len, n->iov, NET_IOV_MAX);
    ssize_t r = readv(n->tap_fd, n->iov, cnt);
    if (r < 0)
        return VIRTIO_RETRY;    /* EAGAIN: nothing more to read */
    atomic_fetch_add_explicit(&d->bytes_in, (uint64_t)r, memory_order_relaxed);
    return r;
}

static void net_rx(struct virtio_dev *d, struct net *n)
{
    int why = virtio_drain(d, RXQ, rx_one, n);
    if (why == DRAIN_BROKEN || why == DRAIN_STOP)
        return;
    rx_watch(d, n, why != DRAIN_EMPTY);     /* out of buffers: wait for the guest's kick */
}

/*
 * One frame to the TAP. No offloads were negotiated, so the guest's virtio_net_hdr has
 * nothing to say: the TAP gets a zeroed header instead of the guest's bytes (a guest could
 * otherwise ask the host kernel for GSO or checksum work on its behalf).
 */
static int64_t tx_one(struct virtio_dev *d, struct virtq_chain *c, void *arg)
{
    static const uint8_t zero_hdr[NET_HDR_LEN];
    struct net *n = arg;
    uint64_t len = c->out_len > NET_HDR_LEN ? c->out_len - NET_HDR_LEN : 0;
    if (len == 0 || len > NET_FRAME_MAX)
        return 0;           /* no frame, or larger than any MTU we offer: dropped */
    n->iov[0].iov_base = (void *)zero_hdr;
    n->iov[0].iov_len = NET_HDR_LEN;
    int cnt = chain_iov(c, 0, NET_HDR_LEN, len, n->iov + 1, NET_IOV_MAX - 1);
    /* a full TAP queue drops the frame, as a wire would */
    if (writev(n->tap_fd, n->iov, cnt + 1) > 0)
        atomic_fetch_add_explicit(&d->bytes_out, len, memory_order_relaxed);
    return 0;
}

static void net_tx(struct virtio_dev *d, struct net *n)
{
    virtio_drain(d, TXQ, tx_one, n);
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
