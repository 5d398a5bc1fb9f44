/*
 * virtio-net backend: a connected stream socket with QEMU's "stream" framing, which passt
 * speaks: each Ethernet frame is preceded by its length as a 4-byte big-endian integer;
 * there is no virtio_net_hdr on the wire (the guest gets a zeroed one).
 *
 * Input is read in bulk into a buffer and cut into frames; a frame larger than the guest's
 * buffer is dropped whole. A length of 0 or above NET_FRAME_MAX desynchronises the stream:
 * the peer is treated as gone. Output that the socket takes only in part keeps its tail
 * here, and no further frame is taken until EPOLLOUT has flushed it, so the framing never
 * breaks and the guest's TX ring is the queue.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net_backend.h"

#define STREAM_RBUF  (256u << 10)           /* >= 2 largest frames with their lengths */
#define STREAM_WBUF  (4 + NET_FRAME_MAX)    /* the tail of one frame */

struct stream {
    struct net_backend b;
    uint8_t *rbuf, *wbuf;
    size_t rstart, rend;    /* received, not yet delivered */
    size_t wstart, wend;    /* accepted, not yet sent */
    int gone;
    struct iovec siov[NET_IOV_MAX];
};

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* copy len bytes of src into iov, starting at byte off of the iov */
static void iov_put(const struct iovec *iov, int cnt, size_t off, const uint8_t *src, size_t len)
{
    for (int i = 0; i < cnt && len; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t n = iov[i].iov_len - off;
        if (n > len)
            n = len;
        if (src)
            memcpy((uint8_t *)iov[i].iov_base + off, src, n);
        else
            memset((uint8_t *)iov[i].iov_base + off, 0, n);
        if (src)
            src += n;
        len -= n;
        off = 0;
    }
}

static size_t iov_len(const struct iovec *iov, int cnt)
{
    size_t t = 0;
    for (int i = 0; i < cnt; i++)
        t += iov[i].iov_len;
    return t;
}

static ssize_t stream_recv(struct net_backend *b, const struct iovec *iov, int cnt)
{
    struct stream *s = (struct stream *)b;
    size_t cap = iov_len(iov, cnt);

    for (;;) {
        size_t avail = s->rend - s->rstart;
        if (avail >= 4) {
            uint32_t len = be32(s->rbuf + s->rstart);
            if (len == 0 || len > NET_FRAME_MAX) {
                s->gone = 1;        /* no way to find the next frame */
                return -EPIPE;
            }
            if (avail >= 4 + (size_t)len) {
                const uint8_t *f = s->rbuf + s->rstart + 4;
                s->rstart += 4 + (size_t)len;
                if (cap < NET_HDR_LEN + (size_t)len) {
                    b->dropped++;   /* larger than the guest's buffer */
                    continue;
                }
                iov_put(iov, cnt, 0, NULL, NET_HDR_LEN);
                iov_put(iov, cnt, NET_HDR_LEN, f, len);
                return NET_HDR_LEN + (ssize_t)len;
            }
        }
        if (s->gone)
            return -EPIPE;
        if (s->rstart && (s->rstart == s->rend || STREAM_RBUF - s->rend < 4 + NET_FRAME_MAX)) {
            memmove(s->rbuf, s->rbuf + s->rstart, avail);
            s->rstart = 0;
            s->rend = avail;
        }
        ssize_t r = read(b->fd, s->rbuf + s->rend, STREAM_RBUF - s->rend);
        if (r > 0) {
            s->rend += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return -EAGAIN;
        s->gone = 1;                /* EOF or a socket error: the peer is gone */
        return -EPIPE;
    }
}

static int stream_flush(struct net_backend *b)
{
    struct stream *s = (struct stream *)b;
    while (s->wstart < s->wend) {
        if (s->gone) {
            s->wstart = s->wend;
            break;
        }
        ssize_t n = send(b->fd, s->wbuf + s->wstart, s->wend - s->wstart, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            s->wstart += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return -EAGAIN;
        } else {
            s->gone = 1;
        }
    }
    s->wstart = s->wend = 0;
    return 0;
}

static ssize_t stream_send(struct net_backend *b, const struct iovec *iov, int cnt)
{
    struct stream *s = (struct stream *)b;
    uint8_t len4[4];

    if (cnt < 1 || cnt > NET_IOV_MAX)
        return 0;
    if (s->wstart < s->wend && stream_flush(b) < 0)
        return -EAGAIN;
    size_t len = iov_len(iov + 1, cnt - 1);
    if (s->gone || len == 0 || len > NET_FRAME_MAX) {
        b->dropped++;
        return 0;
    }
    len4[0] = (uint8_t)(len >> 24);
    len4[1] = (uint8_t)(len >> 16);
    len4[2] = (uint8_t)(len >> 8);
    len4[3] = (uint8_t)len;
    /* the 4-byte length takes the place of the virtio_net_hdr */
    s->siov[0].iov_base = len4;
    s->siov[0].iov_len = 4;
    memcpy(s->siov + 1, iov + 1, (size_t)(cnt - 1) * sizeof(*iov));
    struct msghdr msg = { .msg_iov = s->siov, .msg_iovlen = (size_t)cnt };
    ssize_t n;
    do
        n = sendmsg(b->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return -EAGAIN;
        s->gone = 1;
        b->dropped++;
        return 0;
    }
    size_t total = 4 + len;
    if ((size_t)n < total) {        /* keep the tail: the stream must stay framed */
        size_t off = (size_t)n, w = 0;
        for (int i = 0; i < cnt && w < total - (size_t)n; i++) {
            size_t l = s->siov[i].iov_len;
            if (off >= l) {
                off -= l;
                continue;
            }
            memcpy(s->wbuf + w, (uint8_t *)s->siov[i].iov_base + off, l - off);
            w += l - off;
            off = 0;
        }
        s->wstart = 0;
        s->wend = w;
    }
    return (ssize_t)len;
}

/* what the peer has not read: our unsent tail and the socket's queue (SIOCOUTQ counts the
   memory of the messages it holds: 0 exactly when the peer has read everything) */
static ssize_t stream_unread(struct net_backend *b)
{
    struct stream *s = (struct stream *)b;
    int queued = 0;
    if (ioctl(b->fd, SIOCOUTQ, &queued) < 0)
        return -errno;
    return (ssize_t)(s->wend - s->wstart) + queued;
}

static void stream_destroy(struct net_backend *b)
{
    struct stream *s = (struct stream *)b;
    close(b->fd);
    free(s->rbuf);
    free(s->wbuf);
    free(s);
}

static const struct net_backend_ops stream_ops = {
    .name = "stream",
    .recv = stream_recv,
    .send = stream_send,
    .flush = stream_flush,
    .unread = stream_unread,
    .destroy = stream_destroy,
};

struct net_backend *net_stream_new(int fd, int *err)
{
    int type = 0;
    socklen_t tl = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_STREAM) {
        *err = type ? -EPROTOTYPE : -ENOTSOCK;
        return NULL;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        *err = -errno;
        return NULL;
    }
    struct stream *s = calloc(1, sizeof(*s));
    if (s) {
        s->rbuf = malloc(STREAM_RBUF);
        s->wbuf = malloc(STREAM_WBUF);
    }
    if (!s || !s->rbuf || !s->wbuf) {
        if (s) {
            free(s->rbuf);
            free(s->wbuf);
        }
        free(s);
        *err = -ENOMEM;
        return NULL;
    }
    s->b.ops = &stream_ops;
    s->b.fd = fd;
    return &s->b;
}
