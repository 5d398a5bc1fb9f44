/* Frame parsing and the output queue; see docs/agent-protocol.md for the format. */
#include "proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
}

void frame_header(uint8_t *out, uint32_t stream, uint8_t type, uint8_t chan, uint32_t len)
{
    put_be32(out, stream);
    out[4] = type;
    out[5] = chan;
    out[6] = out[7] = 0;
    put_be32(out + 8, len);
}

int frame_parse(const uint8_t *buf, size_t avail, struct frame *f, size_t *used, const char **why)
{
    if (avail < HDR_LEN)
        return 0;
    f->stream = be32(buf);
    f->type = buf[4];
    f->chan = buf[5];
    f->len = be32(buf + 8);
    if (buf[6] || buf[7])
        return *why = "reserved header bytes are not zero", -EPROTO;
    if (f->type < T_HELLO || f->type > T_CREDIT)
        return *why = "unknown frame type", -EPROTO;
    if (f->chan > CH_ERR)
        return *why = "unknown channel", -EPROTO;
    if (f->len > MAX_PAYLOAD)
        return *why = "frame longer than the limit", -EPROTO;
    if (f->type == T_EOF && f->len != 0)
        return *why = "EOF frame with a payload", -EPROTO;
    if (f->type == T_CREDIT && f->len != 4)
        return *why = "CREDIT frame payload is not 4 bytes", -EPROTO;
    if ((f->type == T_HELLO || f->type == T_CONTROL) && f->len < 2)
        return *why = "control frame too short", -EPROTO;
    if ((f->type == T_HELLO || f->type == T_CONTROL) && f->chan != 0)
        return *why = "control frame on a data channel", -EPROTO;
    if (avail < HDR_LEN + (size_t)f->len)
        return 0;
    f->payload = buf + HDR_LEN;
    *used = HDR_LEN + f->len;
    return 1;
}

int outq_frame(struct outq *q, uint32_t stream, uint8_t type, uint8_t chan, const void *p, uint32_t n)
{
    size_t need = HDR_LEN + (size_t)n;
    if (q->len + need > OUTQ_MAX)
        return -ENOBUFS;
    if (q->head && q->head + q->len + need > q->cap) {
        memmove(q->buf, q->buf + q->head, q->len);
        q->head = 0;
    }
    if (q->len + need > q->cap) {
        size_t cap = q->cap ? q->cap : 65536;
        while (cap < q->len + need)
            cap *= 2;
        uint8_t *nb = realloc(q->buf, cap);
        if (!nb)
            return -ENOMEM;
        q->buf = nb;
        q->cap = cap;
    }
    uint8_t *w = q->buf + q->head + q->len;
    frame_header(w, stream, type, chan, n);
    if (n)
        memcpy(w + HDR_LEN, p, n);
    q->len += need;
    return 0;
}

int outq_flush(struct outq *q, int fd)
{
    while (q->len) {
        ssize_t n = write(fd, q->buf + q->head, q->len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return 0;
            return -errno;
        }
        q->head += n;
        q->len -= n;
    }
    q->head = 0;
    return 0;
}

void outq_free(struct outq *q)
{
    free(q->buf);
    *q = (struct outq){ 0 };
}
