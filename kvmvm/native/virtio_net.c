/*
 * virtio-net (device 1) over a backend (net_backend.h): a TAP device, or a stream socket
 * to passt (`--net user`). No offloads, so every frame fits the MTU and the guest's
 * virtio_net_hdr is replaced with zeros on the way out. The backend's fd is watched for
 * input only while the guest has receive buffers posted (otherwise it would wake the
 * worker for nothing), and for output only while the backend is congested.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "net_backend.h"
#include "net_handshake.h"
#include "virtio.h"
#include "rate_limiter.h"

#define VIRTIO_NET_F_MAC     5
#define VIRTIO_NET_F_STATUS  16
#define NET_QUEUE_MAX        256
#define RXQ                  0
#define TXQ                  1
#define BACKEND_TAG          0x10000
#define RX_RL_TAG            0x10001   /* the rate limiters' timerfds */
#define TX_RL_TAG            0x10002
#define HOLD_TAG             0x10003   /* the timerfd of the hold after a SYN (struct net) */
#define NET_INJECT_MAX       8         /* frames the device made, waiting for rx buffers */
#define HOLD_TICK_NS         1000000   /* how often a hold looks at passt's input again: */
#define HOLD_FAST_TICKS      50        /* every 1 ms for the first 50 ms, then every 10 ms */
#define HOLD_MAX_TICKS       (HOLD_FAST_TICKS + 3000)   /* about 30 s: then the frames go anyway */

struct net {
    struct net_backend *be;
    int rx_watching;
    int tx_blocked;         /* the backend refused a frame: wait for EPOLLOUT */
    int gone;               /* the backend's peer went away: its fd is no longer watched */
    int rx_limited;         /* the last drain stopped on the rx rate limiter */
    struct rate_limiter rx_rl, tx_rl;
    uint8_t mac[6];
    struct net_handshake *hs;   /* passt: the handshake ACKs it leaves out (net_handshake.c) */
    uint8_t inject[NET_INJECT_MAX][HS_FRAME_MAX];
    uint8_t inject_len[NET_INJECT_MAX];
    int inject_head, inject_count;
    /*
     * After a TCP segment with SYN goes to passt, nothing more goes until passt has read it.
     * Debian 12's passt spins forever (100% CPU, no more forwarding, its socket's close
     * never seen) when one read of its input holds a segment it answers as one (a SYN
     * opening a connection, the SYN,ACK of one it opened) and more segments of the same
     * connection: its loop over a batch counts the first call as one segment and the next
     * as the whole batch (tap4_handler: `while ((n -= tcp_tap_handler(...)))`, n unsigned).
     * A SYN and its retransmission in one read, or the guest's SYN,ACK and the greeting it
     * sends as soon as it has the handshake ACK (above), are such batches: so that ACK
     * waits for the hold to end too. The hold lasts as long as passt takes to read (a
     * loaded host can take seconds; frames let go earlier, e.g. the SYN's retransmission,
     * would make just such a batch); passt ending ends it (its socket's queue empties), and
     * a passt that loops anyway is killed by kvmvm/net/passt.py's watchdog.
     */
    int hold_fd;            /* timerfd; -1 without handshake ACKs (i.e. not passt) */
    int tx_held, hold_ticks;
    struct iovec iov[NET_IOV_MAX];
};

/* copy up to cap bytes of iov, from byte off on, into buf (a private copy to parse) */
static size_t iov_peek(const struct iovec *iov, int cnt, size_t off, uint8_t *buf, size_t cap)
{
    size_t got = 0;
    for (int i = 0; i < cnt && got < cap; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t k = iov[i].iov_len - off;
        if (k > cap - got)
            k = cap - got;
        memcpy(buf + got, (const uint8_t *)iov[i].iov_base + off, k);
        got += k;
        off = 0;
    }
    return got;
}

/* a zeroed virtio_net_hdr and then len bytes of f into the chain's iov (cap checked by the caller) */
static void iov_fill(const struct iovec *iov, int cnt, const uint8_t *f, size_t len)
{
    size_t off = 0, total = NET_HDR_LEN + len;
    for (int i = 0; i < cnt && off < total; i++) {
        uint8_t *p = iov[i].iov_base;
        for (size_t k = 0; k < iov[i].iov_len && off < total; k++, off++)
            p[k] = off < NET_HDR_LEN ? 0 : f[off - NET_HDR_LEN];
    }
}

static void net_config_read(struct virtio_dev *d, uint32_t off, uint8_t *data, uint32_t len)
{
    struct net *n = d->priv;
    uint8_t cfg[8] = { 0 };
    memcpy(cfg, n->mac, 6);
    cfg[6] = 1;     /* VIRTIO_NET_S_LINK_UP */
    memcpy(data, cfg + off, len);
}

static void net_watch(struct virtio_dev *d, struct net *n)
{
    if (!n->gone)
        virtio_worker_modify(d, n->be->fd, (n->rx_watching ? EPOLLIN : 0) |
                             (n->tx_blocked ? EPOLLOUT : 0), BACKEND_TAG);
}

static void rx_watch(struct virtio_dev *d, struct net *n, int on)
{
    if (n->rx_watching == on)
        return;
    n->rx_watching = on;
    net_watch(d, n);
}

/* the peer hung up: EPOLLHUP cannot be masked, so the fd leaves the epoll set */
static void backend_gone(struct virtio_dev *d, struct net *n)
{
    if (n->gone)
        return;
    n->gone = 1;
    virtio_worker_unwatch(d, n->be->fd);
}

static void hold_arm(struct net *n)
{
    struct itimerspec its = {
        .it_value = { .tv_nsec = n->hold_ticks < HOLD_FAST_TICKS ? HOLD_TICK_NS : 10 * HOLD_TICK_NS } };
    if (timerfd_settime(n->hold_fd, 0, &its, NULL) < 0)
        n->tx_held = 0;     /* cannot happen with a valid fd; never hold without a timer */
}

/* still holding the guest's frames back (struct net)? Ends once passt has read all the
   device sent it, or after HOLD_MAX_TICKS */
static int tx_holding(struct net *n)
{
    if (!n->tx_held)
        return 0;
    if (n->be->ops->unread(n->be) > 0 && n->hold_ticks < HOLD_MAX_TICKS)
        return 1;
    n->tx_held = 0;
    return 0;
}

static void net_tx(struct virtio_dev *d, struct net *n);

static void hold_tick(struct virtio_dev *d, struct net *n)
{
    uint64_t ticks;
    if (read(n->hold_fd, &ticks, sizeof(ticks)) < 0 || !n->tx_held)
        return;
    n->hold_ticks++;
    if (tx_holding(n))
        hold_arm(n);
    else if (d->q[TXQ].size)
        net_tx(d, n);
}

/* one frame from the backend into a posted receive buffer */
static int64_t rx_one(struct virtio_dev *d, struct virtq_chain *c, void *arg)
{
    struct net *n = arg;
    if (c->in_len < NET_HDR_LEN)
        return 0;           /* too small for the header: handed back unused */
    if (!rl_ready(&n->rx_rl)) {     /* out of tokens: the backend waits for the timer */
        n->rx_limited = 1;
        return VIRTIO_RETRY;
    }
    int cnt = chain_iov(c, 1, 0, c->in_len, n->iov, NET_IOV_MAX);
    if (n->inject_count && !tx_holding(n)) {    /* a frame the device made goes first; a
                                                   handshake ACK once passt has read the SYN,ACK */
        size_t len = n->inject_len[n->inject_head];
        if (c->in_len < NET_HDR_LEN + len)
            return 0;
        iov_fill(n->iov, cnt, n->inject[n->inject_head], len);
        n->inject_head = (n->inject_head + 1) % NET_INJECT_MAX;
        n->inject_count--;
        atomic_fetch_add_explicit(&d->bytes_in, NET_HDR_LEN + len, memory_order_relaxed);
        return (int64_t)(NET_HDR_LEN + len);
    }
    ssize_t r = n->be->ops->recv(n->be, n->iov, cnt);
    if (r == -EPIPE)
        backend_gone(d, n);     /* gone for good (a TAP deleted under us, passt ended, a
                                   corrupt stream): stop reading it, or its level-triggered
                                   error would wake the worker in a loop */
    if (r < 0)
        return VIRTIO_RETRY;    /* EAGAIN: nothing more to read */
    rl_take(&n->rx_rl, r > NET_HDR_LEN ? (uint64_t)r - NET_HDR_LEN : 0);
    atomic_fetch_add_explicit(&d->bytes_in, (uint64_t)r, memory_order_relaxed);
    if (n->hs && r > NET_HDR_LEN) {
        uint8_t peek[HS_PEEK];
        size_t k = (size_t)r - NET_HDR_LEN < HS_PEEK ? (size_t)r - NET_HDR_LEN : HS_PEEK;
        hs_from_peer(n->hs, peek, iov_peek(n->iov, cnt, NET_HDR_LEN, peek, k));
    }
    return r;
}

static void net_rx(struct virtio_dev *d, struct net *n)
{
    n->rx_limited = 0;
    int why = virtio_drain(d, RXQ, rx_one, n);
    if (why == DRAIN_BROKEN || why == DRAIN_STOP)
        return;
    /* out of buffers: wait for the guest's kick; out of tokens: for the limiter's timer */
    rx_watch(d, n, why != DRAIN_EMPTY && !n->rx_limited);
}

/*
 * One frame to the backend. No offloads were negotiated, so the guest's virtio_net_hdr has
 * nothing to say: the backend gets a zeroed header instead of the guest's bytes (a guest
 * could otherwise ask the host kernel for GSO or checksum work on its behalf).
 */
static int64_t tx_one(struct virtio_dev *d, struct virtq_chain *c, void *arg)
{
    static const uint8_t zero_hdr[NET_HDR_LEN];
    struct net *n = arg;
    uint64_t len = c->out_len > NET_HDR_LEN ? c->out_len - NET_HDR_LEN : 0;
    if (len == 0 || len > NET_FRAME_MAX)
        return 0;           /* no frame, or larger than any MTU we offer: dropped */
    if (tx_holding(n))
        return VIRTIO_RETRY;    /* sent once passt has read the SYN (struct net) */
    if (!rl_consume(&n->tx_rl, len))
        return VIRTIO_RETRY;    /* sent when the rate limiter's timer fires */
    n->iov[0].iov_base = (void *)zero_hdr;
    n->iov[0].iov_len = NET_HDR_LEN;
    int cnt = chain_iov(c, 0, NET_HDR_LEN, len, n->iov + 1, NET_IOV_MAX - 1);
    ssize_t r = n->be->ops->send(n->be, n->iov, cnt + 1);
    if (r == -EAGAIN) {
        n->tx_blocked = 1;      /* the chain goes back; EPOLLOUT resumes the queue */
        net_watch(d, n);
        return VIRTIO_RETRY;
    }
    if (r > 0)
        atomic_fetch_add_explicit(&d->bytes_out, len, memory_order_relaxed);
    if (n->hs) {
        uint8_t peek[HS_PEEK], ack[HS_FRAME_MAX];
        size_t got = iov_peek(n->iov + 1, cnt, 0, peek, len < HS_PEEK ? len : HS_PEEK);
        int syn;
        size_t alen = hs_from_guest(n->hs, peek, got, ack, sizeof(ack), &syn);
        if (alen && n->inject_count < NET_INJECT_MAX) {
            int slot = (n->inject_head + n->inject_count++) % NET_INJECT_MAX;
            memcpy(n->inject[slot], ack, alen);
            n->inject_len[slot] = (uint8_t)alen;
        }
        if (r > 0 && n->hold_fd >= 0 && n->be->ops->unread && syn) {
            n->tx_held = 1;     /* until passt has read this SYN (struct net) */
            n->hold_ticks = 0;
            hold_arm(n);
        }
    }
    return 0;
}

static void net_tx(struct virtio_dev *d, struct net *n)
{
    if (!n->tx_blocked)
        virtio_drain(d, TXQ, tx_one, n);
    if (n->inject_count && !tx_holding(n) && d->q[RXQ].size)
        net_rx(d, n);           /* the device made a frame for the guest */
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
    struct net *n = d->priv;
    if (tag == RX_RL_TAG) {
        rl_timer_ack(&n->rx_rl);
        if (d->q[RXQ].size)
            net_rx(d, n);
        return;
    }
    if (tag == TX_RL_TAG) {
        rl_timer_ack(&n->tx_rl);
        if (d->q[TXQ].size)
            net_tx(d, n);
        return;
    }
    if (tag == HOLD_TAG) {
        hold_tick(d, n);
        return;
    }
    if (tag != BACKEND_TAG)
        return;
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR) && n->tx_blocked &&
        n->be->ops->flush(n->be) == 0) {
        n->tx_blocked = 0;
        net_watch(d, n);
        net_tx(d, n);
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        net_rx(d, n);
    if (events & (EPOLLHUP | EPOLLERR) && !n->gone) {
        /* EOF is seen by recv; a hang-up with input still buffered waits for the guest */
        if (!n->rx_watching)
            backend_gone(d, n);
    }
}

static int net_activate(struct virtio_dev *d)
{
    struct net *n = d->priv;
    int rc;
    n->rx_watching = 1;
    n->tx_blocked = 0;
    n->inject_count = n->tx_held = 0;  /* for connections of before the reset */
    if ((rc = virtio_worker_watch(d, n->rx_rl.timer_fd, EPOLLIN, RX_RL_TAG)) < 0 ||
        (rc = virtio_worker_watch(d, n->tx_rl.timer_fd, EPOLLIN, TX_RL_TAG)) < 0 ||
        (n->hold_fd >= 0 && (rc = virtio_worker_watch(d, n->hold_fd, EPOLLIN, HOLD_TAG)) < 0))
        return rc;
    return n->gone ? 0 : virtio_worker_watch(d, n->be->fd, EPOLLIN, BACKEND_TAG);
}

static void net_destroy(struct virtio_dev *d)
{
    struct net *n = d->priv;
    if (!n)
        return;
    if (n->be)
        n->be->ops->destroy(n->be);
    free(n->hs);
    if (n->hold_fd >= 0)
        close(n->hold_fd);
    rl_destroy(&n->rx_rl);
    rl_destroy(&n->tx_rl);
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

static int net_add(kvmvm_vm *vm, uint64_t base, int irq, int flags, struct net_backend *be,
                   const uint8_t *mac)
{
    struct net *n = calloc(1, sizeof(*n));
    if (!n) {
        be->ops->destroy(be);
        return -ENOMEM;
    }
    int rc = rl_init(&n->rx_rl);
    if (rc == 0 && (rc = rl_init(&n->tx_rl)) < 0)
        rl_destroy(&n->rx_rl);
    if (rc < 0) {
        free(n);
        be->ops->destroy(be);
        return rc;
    }
    n->be = be;
    n->hold_fd = -1;
    memcpy(n->mac, mac, 6);
    return virtio_mmio_add(vm, base, irq, flags, &net_ops, n, 1ull << VIRTIO_NET_F_MAC);
}

int kvmvm_vm_add_virtio_net(kvmvm_vm *vm, uint64_t base, int irq, int flags,
                            const char *tap, const uint8_t *mac)
{
    int err = 0;
    struct net_backend *be = net_tap_open(tap, &err);
    return be ? net_add(vm, base, irq, flags, be, mac) : err;
}

/* virtio-net over an already open fd that speaks TAP's framing (vnet header first): the
   fuzz harnesses use a socketpair; the device owns fd from here on, also on failure */
int virtio_net_add_fd(struct kvmvm_vm *vm, uint64_t base, int irq, int flags, int fd,
                      const uint8_t *mac)
{
    int err = 0;
    struct net_backend *be = net_tap_from_fd(fd, &err);
    if (!be) {
        close(fd);
        return err;
    }
    return net_add(vm, base, irq, flags, be, mac);
}

int kvmvm_vm_add_virtio_net_stream(kvmvm_vm *vm, uint64_t base, int irq, int flags,
                                   int fd, const uint8_t *mac)
{
    int err = 0;
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 3);   /* the caller keeps its fd either way */
    if (own < 0)
        return -errno;
    struct net_backend *be = net_stream_new(own, &err);
    if (!be) {
        close(own);
        return err;
    }
    return net_add(vm, base, irq, flags, be, mac);
}

/* passt's missing handshake ACKs made by the device (net_handshake.c); before the VM runs */
int kvmvm_vm_virtio_net_ack_handshakes(kvmvm_vm *vm, uint64_t base)
{
    struct virtio_dev *d = virtio_find(vm, base);
    if (!d || d->ops != &net_ops)
        return -ENODEV;
    struct net *n = d->priv;
    if (!n->hs && !(n->hs = calloc(1, sizeof(*n->hs))))
        return -ENOMEM;
    if (n->hold_fd >= 0)
        return 0;
    if ((n->hold_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)) < 0)
        return -errno;
    /* a device already running (a restored one) watches it from now on */
    return d->running ? virtio_worker_watch(d, n->hold_fd, EPOLLIN, HOLD_TAG) : 0;
}

int kvmvm_vm_virtio_net_rate_limit(kvmvm_vm *vm, uint64_t base, int rx,
                                   const struct kvmvm_token_bucket *bandwidth,
                                   const struct kvmvm_token_bucket *ops)
{
    struct virtio_dev *d = virtio_find(vm, base);
    if (!d || d->ops != &net_ops)
        return -ENODEV;
    struct net *n = d->priv;
    rl_set(rx ? &n->rx_rl : &n->tx_rl, bandwidth, ops);
    return 0;
}
