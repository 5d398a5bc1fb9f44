/*
 * net_handshake.c alone: frames of fuzzer bytes, each to the guest (hs_from_peer) or from
 * it (hs_from_guest). Every ACK it makes must be a well-formed frame: a TCP ACK with valid
 * IPv4 and TCP checksums (IPv6: a valid TCP checksum), no longer than HS_FRAME_MAX.
 */
#include <stdlib.h>
#include <string.h>

#include "env.h"
#include "net_handshake.h"

static uint32_t sum16(const uint8_t *p, size_t len, uint32_t s)
{
    for (size_t i = 0; i + 1 < len; i += 2)
        s += (uint32_t)(p[i] << 8 | p[i + 1]);
    return s;
}

static int folds_to_zero(uint32_t s)
{
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return s == 0xffff;
}

static void check_ack(const uint8_t *f, size_t n)
{
    if (n > HS_FRAME_MAX || n < 54)
        abort();
    if (f[12] == 0x08 && f[13] == 0x00) {
        const uint8_t *ip = f + 14, *th = ip + 20;
        if (n != 54 || ip[0] != 0x45 || !folds_to_zero(sum16(ip, 20, 0)))
            abort();
        if (!folds_to_zero(sum16(th, 20, sum16(ip + 12, 8, 6 + 20))) || th[13] != 0x10)
            abort();
    } else if (f[12] == 0x86 && f[13] == 0xdd) {
        const uint8_t *ip = f + 14, *th = ip + 40;
        if (n != 74 || ip[0] >> 4 != 6 || !folds_to_zero(sum16(th, 20, sum16(ip + 8, 32, 6 + 20))) ||
            th[13] != 0x10)
            abort();
    } else {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };
    static struct net_handshake h;
    uint8_t f[HS_PEEK], ack[HS_FRAME_MAX];

    memset(&h, 0, sizeof(h));
    while (in.n) {
        uint8_t op = in_u8(&in);
        size_t n = in_u8(&in) % (sizeof(f) + 1);
        n = in_bytes(&in, f, n);
        if (op & 1) {
            hs_from_peer(&h, f, n);
        } else {
            size_t k = hs_from_guest(&h, f, n, ack, sizeof(ack), NULL);
            if (k)
                check_ack(ack, k);
        }
    }
    return 0;
}
