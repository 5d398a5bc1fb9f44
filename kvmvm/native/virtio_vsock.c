/*
 * virtio-vsock (device 19) with Firecracker's host side over Unix sockets:
 * - host -> guest: the host connects to uds_path and writes "CONNECT <port>\n"; we send the
 *   guest a REQUEST, and on its RESPONSE answer "OK <host port>\n"; then bytes flow.
 * - guest -> host: a REQUEST to host port P connects to "<uds_path>_P".
 * Streams only. Guest->host bytes are buffered (at most our advertised buf_alloc) until
 * the socket takes them; host->guest bytes are read only while the guest has credit and
 * receive buffers. Control packets wait on a per-connection bitmask until rx has room.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "virtio.h"

#define RXQ 0
#define TXQ 1
#define EVQ 2

#define HOST_CID      2
#define TYPE_STREAM   1
#define OP_REQUEST    1
#define OP_RESPONSE   2
#define OP_RST        3
#define OP_SHUTDOWN   4
#define OP_RW         5
#define OP_CREDIT_UPDATE  6
#define OP_CREDIT_REQUEST 7

#define CONN_BUF      (256u * 1024)     /* our buf_alloc: guest->host bytes we hold per stream */
#define LISTEN_TAG    0x10000
#define MAX_CONNS     256     /* streams + RSTs waiting for the guest */
#define FIRST_LOCAL_PORT (1u << 30)
/* a host connection the guest leaves unanswered, or a stream the guest never gives any
   credit, is reset after this long (Firecracker's connect timeout is 2 s) */
#define STALL_NS      (2000ll * 1000 * 1000)
#define HANDSHAKE_NS  (10000ll * 1000 * 1000)

struct hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

enum { C_HANDSHAKE, C_WAIT_GUEST, C_OPEN, C_DEAD };
/* pending control packets */
#define P_REQUEST  1
#define P_RESPONSE 2
#define P_RST      4
#define P_CREDIT   8
#define P_SHUTDOWN 16

struct conn {
    struct conn *next;
    int fd, state, readable;
    int watched;                /* fd is in the epoll set (only while events != 0) */
    uint32_t events;            /* what epoll watches now */
    int64_t deadline_ns;        /* 0, or when a stalled state gives up (see vsock_expire) */
    uint32_t local_port, peer_port;
    unsigned pending;
    char line[40];
    int line_len;
    uint8_t *buf;               /* guest->host bytes not yet written to fd (ring) */
    uint32_t buf_head, buf_len;
    uint32_t fwd_cnt, fwd_sent; /* bytes handed to the socket; last value told to the guest */
    uint32_t peer_buf_alloc, peer_fwd_cnt, rx_cnt;
};

struct vsock {
    uint64_t cid;
    char uds[108];
    int listen_fd;
    struct conn *conns;
    uint32_t next_port;
};

static void vsock_config_read(struct virtio_dev *d, uint32_t off, uint8_t *data, uint32_t len)
{
    struct vsock *v = d->priv;
    memcpy(data, (uint8_t *)&v->cid + off, len);
}

/* --- connections --- */

/*
 * Watch c->fd for what it can do next. An fd with nothing to wait for leaves the epoll set
 * altogether: epoll reports EPOLLHUP/EPOLLERR even on an empty mask, and a hung-up peer
 * would otherwise wake the worker in a loop while the guest posts no receive buffers.
 */
static void conn_arm(struct virtio_dev *d, struct conn *c)
{
    uint32_t ev = 0;
    if (c->fd < 0)
        return;
    if (!c->readable && c->state != C_WAIT_GUEST)
        ev |= EPOLLIN;
    if (c->buf_len)
        ev |= EPOLLOUT;
    if (!ev) {
        if (c->watched)
            virtio_worker_unwatch(d, c->fd);
        c->watched = 0;
    } else if (!c->watched) {
        c->watched = virtio_worker_watch(d, c->fd, ev, (uint64_t)(uintptr_t)c) == 0;
    } else if (ev != c->events) {
        virtio_worker_modify(d, c->fd, ev, (uint64_t)(uintptr_t)c);
    }
    c->events = ev;
}

static int conn_count(struct vsock *v)
{
    int n = 0;
    for (struct conn *c = v->conns; c; c = c->next)
        n++;
    return n;
}

static struct conn *conn_new(struct virtio_dev *d, int fd, int state)
{
    struct vsock *v = d->priv;
    if (conn_count(v) >= MAX_CONNS)
        return NULL;
    struct conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->buf = malloc(CONN_BUF);
    if (!c->buf) {
        free(c);
        return NULL;
    }
    c->fd = fd;
    c->state = state;
    if (state == C_HANDSHAKE)
        c->deadline_ns = kvmvm_now_ns() + HANDSHAKE_NS;
    conn_arm(d, c);         /* a new stream always waits for input */
    if (!c->watched) {
        free(c->buf);
        free(c);
        return NULL;
    }
    c->next = v->conns;
    v->conns = c;
    return c;
}

/* Stop the stream: the socket goes now; the struct stays until its RST reached the guest. */
static void conn_close(struct virtio_dev *d, struct conn *c, int send_rst)
{
    if (c->fd >= 0) {
        if (c->watched)
            virtio_worker_unwatch(d, c->fd);
        close(c->fd);
        c->fd = -1;
    }
    c->watched = 0;
    c->deadline_ns = 0;
    c->state = C_DEAD;
    c->pending = send_rst ? P_RST : 0;
}

static void conn_reap(struct vsock *v)
{
    for (struct conn **pp = &v->conns; *pp;) {
        struct conn *c = *pp;
        if (c->state == C_DEAD && !c->pending) {
            *pp = c->next;
            free(c->buf);
            free(c);
        } else {
            pp = &c->next;
        }
    }
}

static struct conn *conn_find(struct vsock *v, uint32_t local, uint32_t peer)
{
    for (struct conn *c = v->conns; c; c = c->next)
        if (c->local_port == local && c->peer_port == peer && c->state != C_DEAD)
            return c;
    return NULL;
}

static uint32_t peer_credit(struct conn *c)
{
    uint32_t used = c->rx_cnt - c->peer_fwd_cnt;
    return used >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - used;
}

/* write buffered guest bytes to the socket */
static void conn_flush(struct virtio_dev *d, struct conn *c)
{
    while (c->buf_len && c->fd >= 0) {
        uint32_t n = c->buf_len, tail = CONN_BUF - c->buf_head;
        if (n > tail)
            n = tail;
        ssize_t w = send(c->fd, c->buf + c->buf_head, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR)
                conn_close(d, c, 1);
            break;
        }
        c->buf_head = (c->buf_head + (uint32_t)w) % CONN_BUF;
        c->buf_len -= (uint32_t)w;
        c->fwd_cnt += (uint32_t)w;
        atomic_fetch_add_explicit(&d->bytes_out, (uint64_t)w, memory_order_relaxed);
    }
    if (c->fwd_cnt - c->fwd_sent >= CONN_BUF / 4)
        c->pending |= P_CREDIT;     /* let the guest send more */
    conn_arm(d, c);
}

/* --- guest -> host (tx queue) --- */

static void reply_rst(struct virtio_dev *d, const struct hdr *h)
{
    /* a stray packet: answer with RST through a throw-away connection record */
    struct vsock *v = d->priv;
    if (conn_count(v) >= MAX_CONNS)
        return;     /* a guest that never takes its RSTs does not get to grow our memory */
    struct conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->fd = -1;
    c->state = C_DEAD;
    c->pending = P_RST;
    c->local_port = h->dst_port;
    c->peer_port = h->src_port;
    c->next = v->conns;
    v->conns = c;
}

static void guest_request(struct virtio_dev *d, const struct hdr *h)
{
    struct vsock *v = d->priv;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int n = snprintf(sa.sun_path, sizeof(sa.sun_path), "%s_%u", v->uds, h->dst_port);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct conn *c = NULL;

    if (fd >= 0 && n < (int)sizeof(sa.sun_path) &&
        connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
        c = conn_new(d, fd, C_OPEN);
    if (!c) {
        if (fd >= 0)
            close(fd);
        reply_rst(d, h);
        return;
    }
    c->local_port = h->dst_port;
    c->peer_port = h->src_port;
    c->peer_buf_alloc = h->buf_alloc;
    c->peer_fwd_cnt = h->fwd_cnt;
    c->pending |= P_RESPONSE;
}

static void guest_packet(struct virtio_dev *d, const struct hdr *h, const struct virtq_chain *ch)
{
    struct vsock *v = d->priv;
    if (h->dst_cid != HOST_CID || h->src_cid != v->cid || h->type != TYPE_STREAM) {
        if (h->op != OP_RST)
            reply_rst(d, h);
        return;
    }
    struct conn *c = conn_find(v, h->dst_port, h->src_port);
    if (h->op == OP_REQUEST) {
        if (c)
            conn_close(d, c, 1);
        else
            guest_request(d, h);
        return;
    }
    if (!c) {
        if (h->op != OP_RST)
            reply_rst(d, h);
        return;
    }
    c->peer_buf_alloc = h->buf_alloc;
    c->peer_fwd_cnt = h->fwd_cnt;
    switch (h->op) {
    case OP_RESPONSE:
        if (c->state == C_WAIT_GUEST) {
            char ok[32];
            int n = snprintf(ok, sizeof(ok), "OK %u\n", c->local_port);
            c->state = C_OPEN;
            c->deadline_ns = 0;
            if (send(c->fd, ok, n, MSG_NOSIGNAL | MSG_DONTWAIT) != n)
                conn_close(d, c, 1);
        }
        break;
    case OP_RW: {
        uint64_t len = ch->out_len - sizeof(*h);
        if (len > h->len)
            len = h->len;
        if (c->state != C_OPEN || len > CONN_BUF - c->buf_len) {
            conn_close(d, c, 1);    /* the guest ignored our credit */
            return;
        }
        uint32_t at = (c->buf_head + c->buf_len) % CONN_BUF, first = CONN_BUF - at;
        if (first > len)
            first = (uint32_t)len;
        chain_read(ch, sizeof(*h), c->buf + at, first);
        chain_read(ch, sizeof(*h) + first, c->buf, len - first);
        c->buf_len += (uint32_t)len;
        conn_flush(d, c);
        break;
    }
    case OP_CREDIT_REQUEST:
        c->pending |= P_CREDIT;
        break;
    case OP_SHUTDOWN:
        if ((h->flags & 3) == 3) {
            conn_flush(d, c);
            conn_close(d, c, 1);    /* full close: the peer expects our RST */
        } else if ((h->flags & 2) && c->fd >= 0 && !c->buf_len) {
            shutdown(c->fd, SHUT_WR);
        }
        break;
    case OP_RST:
        conn_close(d, c, 0);
        break;
    default:    /* CREDIT_UPDATE: the fields above were all it carried */
        break;
    }
    if (c->state != C_DEAD)
        conn_arm(d, c);
}

static int64_t tx_one(struct virtio_dev *d, struct virtq_chain *ch, void *arg)
{
    struct hdr h;
    if (chain_read(ch, 0, &h, sizeof(h)) == sizeof(h))
        guest_packet(d, &h, ch);
    return 0;
}

static void vsock_tx(struct virtio_dev *d)
{
    virtio_drain(d, TXQ, tx_one, NULL);
}

/* --- host -> guest (rx queue) --- */

static void fill_hdr(struct vsock *v, struct conn *c, struct hdr *h, uint16_t op, uint32_t len)
{
    memset(h, 0, sizeof(*h));
    h->src_cid = HOST_CID;
    h->dst_cid = v->cid;
    h->src_port = c->local_port;
    h->dst_port = c->peer_port;
    h->len = len;
    h->type = TYPE_STREAM;
    h->op = op;
    h->flags = op == OP_SHUTDOWN ? 3 : 0;
    h->buf_alloc = CONN_BUF;
    h->fwd_cnt = c->fwd_cnt;
    c->fwd_sent = c->fwd_cnt;
}

/* one packet for c into the chain: returns its length, 0 if c has nothing to send now */
static uint32_t conn_rx_packet(struct virtio_dev *d, struct conn *c, struct virtq_chain *ch)
{
    struct vsock *v = d->priv;
    struct hdr h;
    static const struct { unsigned bit; uint16_t op; } ctl[] = {
        { P_RST, OP_RST }, { P_REQUEST, OP_REQUEST }, { P_RESPONSE, OP_RESPONSE },
        { P_SHUTDOWN, OP_SHUTDOWN }, { P_CREDIT, OP_CREDIT_UPDATE },
    };
    for (unsigned i = 0; i < sizeof(ctl) / sizeof(ctl[0]); i++) {
        if (!(c->pending & ctl[i].bit))
            continue;
        c->pending &= ~ctl[i].bit;
        if (ctl[i].bit == P_RST)
            c->pending = 0;
        fill_hdr(v, c, &h, ctl[i].op, 0);
        chain_write(ch, 0, &h, sizeof(h));
        return sizeof(h);
    }
    if (c->state != C_OPEN || !c->readable || c->fd < 0)
        return 0;
    uint64_t room = ch->in_len - sizeof(h);
    uint32_t credit = peer_credit(c);
    if (room > credit)
        room = credit;
    if (room == 0)
        return 0;
    struct iovec iov[64];
    int n = chain_iov(ch, 1, sizeof(h), room, iov, 64);
    ssize_t r = readv(c->fd, iov, n);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
        /* EOF from the host: SHUTDOWN now, then RST (pending) so the stream is gone */
        conn_close(d, c, 1);
        fill_hdr(v, c, &h, OP_SHUTDOWN, 0);
        chain_write(ch, 0, &h, sizeof(h));
        return sizeof(h);
    }
    if (r < 0) {
        c->readable = 0;
        conn_arm(d, c);
        return 0;
    }
    c->rx_cnt += (uint32_t)r;
    atomic_fetch_add_explicit(&d->bytes_in, (uint64_t)r, memory_order_relaxed);
    fill_hdr(v, c, &h, OP_RW, (uint32_t)r);
    chain_write(ch, 0, &h, sizeof(h));
    return sizeof(h) + (uint32_t)r;
}

/* the next packet any connection has for the guest, round-robin over the connections */
static int64_t rx_one(struct virtio_dev *d, struct virtq_chain *ch, void *arg)
{
    struct vsock *v = d->priv;
    if (ch->in_len < sizeof(struct hdr))
        return 0;           /* too short for a header: handed back unused (and told) */
    for (struct conn **pp = &v->conns; *pp; pp = &(*pp)->next) {
        struct conn *c = *pp;
        uint32_t len = conn_rx_packet(d, c, ch);
        if (!len)
            continue;
        if (c->next) {      /* served: to the back of the line */
            struct conn **tail = &c->next;
            while (*tail)
                tail = &(*tail)->next;
            *pp = c->next;
            c->next = NULL;
            *tail = c;
        }
        return len;
    }
    return VIRTIO_RETRY;    /* nobody has anything: keep the buffer */
}

static void vsock_rx(struct virtio_dev *d)
{
    virtio_drain(d, RXQ, rx_one, NULL);
}

/* --- host side sockets --- */

static void host_accept(struct virtio_dev *d)
{
    struct vsock *v = d->priv;
    for (;;) {
        int fd = accept4(v->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        if (!conn_new(d, fd, C_HANDSHAKE))
            close(fd);
    }
}

/* read "CONNECT <port>\n" one byte at a time: nothing after the newline is ours to take */
static void host_handshake(struct virtio_dev *d, struct conn *c)
{
    struct vsock *v = d->priv;
    char ch;
    ssize_t r;
    while ((r = read(c->fd, &ch, 1)) == 1) {
        if (ch != '\n') {
            if (c->line_len + 1 >= (int)sizeof(c->line))
                break;
            c->line[c->line_len++] = ch;
            continue;
        }
        c->line[c->line_len] = 0;
        char *end;
        unsigned long port = strtoul(c->line + 8, &end, 10);
        if (strncmp(c->line, "CONNECT ", 8) || *end || end == c->line + 8 || port > 0xffffffffUL)
            break;
        c->peer_port = (uint32_t)port;
        c->local_port = v->next_port++;
        c->state = C_WAIT_GUEST;
        c->deadline_ns = kvmvm_now_ns() + STALL_NS;
        c->pending |= P_REQUEST;
        conn_arm(d, c);
        return;
    }
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    conn_close(d, c, 0);    /* EOF, bad line or too long */
}

static void vsock_fd_event(struct virtio_dev *d, uint64_t tag, uint32_t events)
{
    if (tag == LISTEN_TAG) {
        host_accept(d);
        return;
    }
    struct conn *c = (struct conn *)(uintptr_t)tag;
    if (c->fd < 0)
        return;
    if (c->state == C_HANDSHAKE) {
        host_handshake(d, c);
    } else {
        if (events & EPOLLOUT)
            conn_flush(d, c);
        if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && c->fd >= 0) {
            c->readable = 1;
            conn_arm(d, c);
        }
    }
    vsock_rx(d);
}

/*
 * Stalled states end on a deadline instead of waiting for ever: a host connection that
 * never completes its CONNECT line, a REQUEST the guest never answers, and a stream with
 * data for a guest that has never granted any credit. The guest gets an RST and the host
 * socket is closed.
 */
static void vsock_expire(struct virtio_dev *d, int64_t now)
{
    struct vsock *v = d->priv;
    int reset = 0;
    for (struct conn *c = v->conns; c; c = c->next) {
        if (c->state == C_OPEN && c->readable && c->peer_buf_alloc == 0) {
            if (!c->deadline_ns)
                c->deadline_ns = now + STALL_NS;
        } else if (c->state == C_OPEN) {
            c->deadline_ns = 0;
        }
        if (c->deadline_ns && now >= c->deadline_ns && c->state != C_DEAD) {
            conn_close(d, c, c->state != C_HANDSHAKE);
            reset = 1;
        }
    }
    if (reset)
        vsock_rx(d);
}

static int vsock_timeout_ms(struct virtio_dev *d)
{
    struct vsock *v = d->priv;
    int64_t now = kvmvm_now_ns(), first = 0;
    for (struct conn *c = v->conns; c; c = c->next) {
        if (c->state == C_OPEN && c->readable && c->peer_buf_alloc == 0 && !c->deadline_ns)
            c->deadline_ns = now + STALL_NS;
        if (c->deadline_ns && (!first || c->deadline_ns < first))
            first = c->deadline_ns;
    }
    if (!first)
        return -1;
    return first <= now ? 0 : (int)((first - now) / 1000000 + 1);
}

/* after each batch of events: no event of the batch can still point at a reaped conn */
static void vsock_idle(struct virtio_dev *d)
{
    vsock_expire(d, kvmvm_now_ns());
    conn_reap(d->priv);
}

static void vsock_notify(struct virtio_dev *d, int q)
{
    if (q == TXQ)
        vsock_tx(d);
    if (q == TXQ || q == RXQ)
        vsock_rx(d);
    /* EVQ: the driver's event buffers stay posted; we only ever send transport resets */
}

static int vsock_activate(struct virtio_dev *d)
{
    struct vsock *v = d->priv;
    return virtio_worker_watch(d, v->listen_fd, EPOLLIN, LISTEN_TAG);
}

static void vsock_deactivate(struct virtio_dev *d)
{
    struct vsock *v = d->priv;
    while (v->conns) {
        struct conn *c = v->conns;
        v->conns = c->next;
        if (c->fd >= 0)
            close(c->fd);
        free(c->buf);
        free(c);
    }
}

/* After a restore: the guest's streams are gone on the host side, so tell its driver
   (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, as Firecracker does); its listeners stay. */
static void vsock_restored(struct virtio_dev *d)
{
    struct virtq_chain *c = d->chain;
    uint32_t id = 0;    /* VIRTIO_VSOCK_EVENT_TRANSPORT_RESET */
    if (!d->q[EVQ].size || virtq_pop(&d->q[EVQ], c) <= 0)
        return;
    virtq_push(&d->q[EVQ], c->head, (uint32_t)chain_write(c, 0, &id, sizeof(id)));
    virtio_queue_done(d, EVQ);
}

static void vsock_destroy(struct virtio_dev *d)
{
    struct vsock *v = d->priv;
    if (!v)
        return;
    vsock_deactivate(d);
    if (v->listen_fd >= 0) {
        close(v->listen_fd);
        unlink(v->uds);     /* the socket kvmvm created */
    }
    free(v);
}

static const struct virtio_dev_ops vsock_ops = {
    .name = "virtio-vsock",
    .device_id = KVMVM_VIRTIO_ID_VSOCK,
    .nqueues = 3,
    .queue_max = 256,
    .config_len = 8,
    .config_read = vsock_config_read,
    .activate = vsock_activate,
    .queue_notify = vsock_notify,
    .fd_event = vsock_fd_event,
    .idle = vsock_idle,
    .timeout_ms = vsock_timeout_ms,
    .deactivate = vsock_deactivate,
    .restored = vsock_restored,
    .destroy = vsock_destroy,
};

int kvmvm_vm_add_virtio_vsock(kvmvm_vm *vm, uint64_t base, int irq, int flags,
                              uint64_t cid, const char *uds_path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct vsock *v;
    if (cid < 3 || cid > 0xfffffffeULL || !uds_path || strlen(uds_path) + 12 >= sizeof(sa.sun_path))
        return -EINVAL;
    v = calloc(1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    v->cid = cid;
    v->next_port = FIRST_LOCAL_PORT;
    snprintf(v->uds, sizeof(v->uds), "%s", uds_path);
    memcpy(sa.sun_path, uds_path, strlen(uds_path));
    v->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (v->listen_fd < 0 || bind(v->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(v->listen_fd, 64) < 0) {
        int e = -errno;
        if (v->listen_fd >= 0)
            close(v->listen_fd);
        free(v);
        return e;
    }
    return virtio_mmio_add(vm, base, irq, flags, &vsock_ops, v, 0);
}
