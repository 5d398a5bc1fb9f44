/* The host <-> agent wire format (docs/agent-protocol.md): framing and limits. */
#ifndef AGENT_PROTO_H
#define AGENT_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION   1
#define AGENT_VSOCK_PORT 1024
#define HDR_LEN         12
#define MAX_PAYLOAD     (256u * 1024)   /* any frame */
#define DATA_CHUNK      (64u * 1024)    /* what we put in one DATA frame */
#define WINDOW          (256u * 1024)   /* initial credit per stream and channel */
#define MAX_STREAMS     64

enum { T_HELLO = 1, T_CONTROL = 2, T_DATA = 3, T_EOF = 4, T_CREDIT = 5 };
enum { CH_IN = 0, CH_OUT = 1, CH_ERR = 2 };

struct frame {
    uint32_t stream;
    uint8_t type, chan;
    uint32_t len;
    const uint8_t *payload;
};

/* Parse one frame from buf[0..avail): 1 and *used when complete, 0 when more bytes are
 * needed, -EPROTO when malformed (*why says how). */
int frame_parse(const uint8_t *buf, size_t avail, struct frame *f, size_t *used, const char **why);
void frame_header(uint8_t *out, uint32_t stream, uint8_t type, uint8_t chan, uint32_t len);

/* A bounded output queue of encoded frames. */
struct outq {
    uint8_t *buf;
    size_t head, len, cap;
};
#define OUTQ_MAX (8u * 1024 * 1024)
int outq_frame(struct outq *q, uint32_t stream, uint8_t type, uint8_t chan, const void *p, uint32_t n);
/* write what the fd takes; 0, or -errno (not EAGAIN) when the peer is gone */
int outq_flush(struct outq *q, int fd);
void outq_free(struct outq *q);

#endif
