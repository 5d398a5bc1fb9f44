/*
 * The handshake ACK passt leaves out (net_handshake.c): SYNs to the guest noted, the
 * guest's matching SYN,ACK answered with the ACK passt should have sent.
 */
#ifndef KVMVM_NET_HANDSHAKE_H
#define KVMVM_NET_HANDSHAKE_H

#include <stddef.h>
#include <stdint.h>

#define HS_ENTRIES      32      /* SYNs remembered; the oldest is forgotten first */
#define HS_PEEK         128     /* bytes of a frame the parser looks at */
#define HS_FRAME_MAX    74      /* Ethernet + IPv6 + TCP, no options */

struct hs_entry {
    uint8_t used, v6;
    uint16_t pport, gport;      /* the peer's (passt's side) and the guest's port */
    uint16_t wnd;               /* window to announce, already in the scaled unit */
    uint32_t iss;               /* the SYN's sequence number */
    uint8_t peer[16], guest[16];
};

struct net_handshake {
    struct hs_entry e[HS_ENTRIES];
    unsigned next;
    uint64_t made;              /* ACKs made */
};

/* f: the first bytes (up to HS_PEEK) of a frame the peer sends to the guest */
void hs_from_peer(struct net_handshake *h, const uint8_t *f, size_t len);
/* f: the first bytes of a frame from the guest; the ACK to give the guest into out
 * (cap >= HS_FRAME_MAX), its length, or 0 when there is none to give. *syn (when syn is
 * not NULL): whether the frame is a TCP segment with SYN set (SYN or SYN,ACK) */
size_t hs_from_guest(struct net_handshake *h, const uint8_t *f, size_t len, uint8_t *out, size_t cap,
                     int *syn);

#endif
