/*
 * The ACK that completes a connection passt opened towards the guest (`-p HOST:GUEST`).
 *
 * passt snapshots up to at least 2023-03 (Debian bookworm's) answer the guest's SYN,ACK
 * only when there is something else to send: in tcp_conn_from_sock_finish() the ACK is
 * "if needed", and it never is, since the ACK sequence was just set to the guest's. The
 * guest's connection then stays in SYN-RECV (its SYN,ACK retransmitted, never accepted)
 * until the host side sends data or closes, so a server that speaks first is never heard.
 * Newer passt sends that ACK itself.
 *
 * So the device plays it: it notes each SYN that passt sends to the guest (addresses,
 * ports, initial sequence, window and window scale) and, when the guest answers one of
 * them with a SYN,ACK, hands the guest the ACK passt would have sent. With a passt that
 * sends it too, the guest sees one duplicate ACK, which TCP ignores. Only frames to the
 * guest are ever made; everything read from guest memory is copied first and parsed from
 * the copy.
 */
#include <string.h>

#include "net_handshake.h"

#define ETH_LEN     14
#define IP4_MIN     20
#define IP6_LEN     40
#define TCP_LEN     20
#define TH_FIN      0x01
#define TH_SYN      0x02
#define TH_RST      0x04
#define TH_ACK      0x10
#define OPT_WS      3

struct tcp_view {
    int v6;
    const uint8_t *src, *dst;       /* 4 or 16 bytes */
    const uint8_t *th;              /* TCP header, at least TCP_LEN bytes */
    size_t thlen;                   /* bytes of TCP header (with options) available */
};

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }

/* an Ethernet frame carrying the first fragment-free segment of a TCP packet, or 0 */
static int tcp_parse(const uint8_t *f, size_t len, struct tcp_view *v)
{
    if (len < ETH_LEN + IP4_MIN + TCP_LEN)
        return 0;
    uint16_t type = get16(f + 12);
    const uint8_t *ip = f + ETH_LEN;
    size_t iplen = len - ETH_LEN, hl;
    if (type == 0x0800) {
        hl = (size_t)(ip[0] & 0x0f) * 4;
        if (ip[0] >> 4 != 4 || hl < IP4_MIN || ip[9] != 6 || (get16(ip + 6) & 0x3fff))
            return 0;       /* not IPv4, not TCP, or a fragment */
        v->v6 = 0;
        v->src = ip + 12;
        v->dst = ip + 16;
    } else if (type == 0x86dd) {
        hl = IP6_LEN;
        if (ip[0] >> 4 != 6 || ip[6] != 6)
            return 0;       /* extension headers: not ours to follow */
        v->v6 = 1;
        v->src = ip + 8;
        v->dst = ip + 24;
    } else {
        return 0;
    }
    if (iplen < hl + TCP_LEN)
        return 0;
    v->th = ip + hl;
    size_t doff = (size_t)(v->th[12] >> 4) * 4;
    v->thlen = doff < TCP_LEN ? TCP_LEN : doff;
    if (v->thlen > iplen - hl)
        v->thlen = iplen - hl;
    return 1;
}

static int tcp_ws(const struct tcp_view *v)
{
    size_t i = TCP_LEN;
    while (i < v->thlen) {
        uint8_t kind = v->th[i];
        if (kind == 0)
            break;
        if (kind == 1) {
            i++;
            continue;
        }
        if (i + 1 >= v->thlen || v->th[i + 1] < 2 || i + v->th[i + 1] > v->thlen)
            break;
        if (kind == OPT_WS && v->th[i + 1] == 3)
            return v->th[i + 2] > 14 ? 14 : v->th[i + 2];
        i += v->th[i + 1];
    }
    return 0;
}

void hs_from_peer(struct net_handshake *h, const uint8_t *f, size_t len)
{
    struct tcp_view v;
    if (!tcp_parse(f, len, &v) || (v.th[13] & (TH_SYN | TH_ACK | TH_RST)) != TH_SYN)
        return;
    struct hs_entry *e = &h->e[h->next++ % HS_ENTRIES];
    size_t alen = v.v6 ? 16 : 4;
    memset(e, 0, sizeof(*e));
    e->used = 1;
    e->v6 = (uint8_t)v.v6;
    memcpy(e->peer, v.src, alen);
    memcpy(e->guest, v.dst, alen);
    e->pport = get16(v.th);
    e->gport = get16(v.th + 2);
    e->iss = get32(v.th + 4);
    /* the SYN's window is unscaled; after the handshake the field counts 2^ws bytes */
    uint32_t wnd = get16(v.th + 14) >> tcp_ws(&v);
    e->wnd = (uint16_t)(wnd ? wnd : 1);
}

static uint16_t csum_fold(uint32_t s)
{
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

static uint32_t csum_add(uint32_t s, const uint8_t *p, size_t len)
{
    for (size_t i = 0; i + 1 < len; i += 2)
        s += get16(p + i);
    if (len & 1)
        s += (uint32_t)p[len - 1] << 8;
    return s;
}

size_t hs_from_guest(struct net_handshake *h, const uint8_t *f, size_t len, uint8_t *out, size_t cap,
                     int *syn)
{
    struct tcp_view v;
    int ok = tcp_parse(f, len, &v);
    if (syn)
        *syn = ok && (v.th[13] & TH_SYN);
    if (!ok || (v.th[13] & (TH_SYN | TH_ACK | TH_RST | TH_FIN)) != (TH_SYN | TH_ACK))
        return 0;
    size_t alen = v.v6 ? 16 : 4, iphl = v.v6 ? IP6_LEN : IP4_MIN;
    size_t total = ETH_LEN + iphl + TCP_LEN;
    uint16_t gport = get16(v.th), pport = get16(v.th + 2);
    uint32_t seq = get32(v.th + 4), ack = get32(v.th + 8);
    const struct hs_entry *e = NULL;
    for (int i = 0; i < HS_ENTRIES && !e; i++) {
        const struct hs_entry *c = &h->e[i];
        if (c->used && c->v6 == v.v6 && c->gport == gport && c->pport == pport &&
            c->iss + 1 == ack && !memcmp(c->peer, v.dst, alen) && !memcmp(c->guest, v.src, alen))
            e = c;
    }
    if (!e || cap < total)
        return 0;

    memset(out, 0, total);
    memcpy(out, f + 6, 6);              /* to the guest's MAC ... */
    memcpy(out + 6, f, 6);              /* ... from the one it sent the SYN,ACK to */
    uint8_t *ip = out + ETH_LEN, *th = ip + iphl;
    uint32_t sum;
    if (v.v6) {
        put16(out + 12, 0x86dd);
        ip[0] = 0x60;
        put16(ip + 4, TCP_LEN);
        ip[6] = 6;
        ip[7] = 255;
        memcpy(ip + 8, e->peer, 16);
        memcpy(ip + 24, e->guest, 16);
        sum = csum_add(0, ip + 8, 32) + 6 + TCP_LEN;
    } else {
        put16(out + 12, 0x0800);
        ip[0] = 0x45;
        put16(ip + 2, IP4_MIN + TCP_LEN);
        put16(ip + 6, 0x4000);          /* don't fragment */
        ip[8] = 255;
        ip[9] = 6;
        memcpy(ip + 12, e->peer, 4);
        memcpy(ip + 16, e->guest, 4);
        put16(ip + 10, csum_fold(csum_add(0, ip, IP4_MIN)));
        sum = csum_add(0, ip + 12, 8) + 6 + TCP_LEN;
    }
    put16(th, pport);
    put16(th + 2, gport);
    put32(th + 4, ack);
    put32(th + 8, seq + 1);
    th[12] = (TCP_LEN / 4) << 4;
    th[13] = TH_ACK;
    put16(th + 14, e->wnd);
    put16(th + 16, csum_fold(csum_add(sum, th, TCP_LEN)));
    h->made++;
    return total;
}
