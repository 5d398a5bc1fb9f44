/*
 * The virtqueue chain walk on its own: a descriptor table, indirect tables and rings that
 * are all fuzzer bytes, walked by virtq_pop, then copied with chain_read / chain_write /
 * chain_iov and completed with virtq_push.
 */
#include <stdlib.h>
#include <string.h>

#include "env.h"

static struct kvmvm_gmem *gm;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };
    static struct virtq q;
    static struct virtq_chain c;
    static uint8_t buf[65536];
    struct iovec iov[64];

    if (!gm) {
        gm = kvmvm_gmem_new();
        if (!gm || kvmvm_gmem_add(gm, 0, FUZZ_RAM) < 0 || kvmvm_gmem_add(gm, 0x100000, 0x10000) < 0)
            abort();
    }
    uint8_t *ram = gm->r[0].hva;
    uint16_t qsize = in_u16(&in);
    uint64_t desc = in_u32(&in), avail = in_u32(&in), used = in_u32(&in);
    uint16_t last = in_u16(&in);
    memset(ram, 0, 0x20000);
    in_bytes(&in, ram, in.n < 0x20000 ? in.n : 0x20000);
    if (virtq_setup(&q, gm, qsize, desc, avail, used) < 0)
        return 0;
    q.last_avail = q.used_idx = last;
    for (int i = 0; i < 64; i++) {
        int rc = virtq_pop(&q, &c);
        if (rc <= 0)
            break;
        /* the walk's invariants: counts and totals agree with the segments */
        uint64_t out = 0, inl = 0;
        if (c.nseg > VIRTQ_MAX_SEGS || c.nout > c.nseg)
            abort();
        for (int s = 0; s < c.nseg; s++) {
            if (!gmem_ptr(gm, c.seg[s].gpa, c.seg[s].len))
                abort();
            if ((s < c.nout) == !!c.seg[s].write)
                abort();
            *(c.seg[s].write ? &inl : &out) += c.seg[s].len;
        }
        if (out != c.out_len || inl != c.in_len || out + inl > VIRTQ_MAX_CHAIN_BYTES)
            abort();
        uint64_t off = ram[i] * 13u;
        uint64_t n = chain_read(&c, off, buf, sizeof(buf));
        chain_write(&c, off / 2, buf, n);
        chain_iov(&c, i & 1, off, 70000, iov, 64);
        virtq_push(&q, c.head, (uint32_t)n);
        (void)virtq_needs_interrupt(&q);
    }
    return 0;
}
