/*
 * Split virtqueues: pop a descriptor chain, push a used element. The queue never owns
 * memory; every ring and buffer address is checked (addr + len) through gmem_ptr, a walk
 * is bounded by the table size (a loop is an error), indirect tables cannot nest and the
 * chain's total length is capped. Each descriptor is copied once before use, so a guest
 * rewriting it under our feet cannot make us follow an unchecked value.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "virtio.h"

int virtq_setup(struct virtq *q, struct kvmvm_gmem *mem, uint16_t size,
                uint64_t desc, uint64_t avail, uint64_t used)
{
    memset(q, 0, sizeof(*q));
    if (size == 0 || size > VIRTQ_MAX_SIZE || (size & (size - 1)))
        return -EINVAL;
    if ((desc & 15) || (avail & 1) || (used & 3))
        return -EINVAL;
    void *d = gmem_ptr(mem, desc, 16ull * size);
    void *a = gmem_ptr(mem, avail, 6 + 2ull * size);
    void *u = gmem_ptr(mem, used, 6 + 8ull * size);
    if (!d || !a || !u)
        return -EFAULT;
    q->mem = mem;
    q->size = size;
    q->desc_gpa = desc;
    q->avail_gpa = avail;
    q->used_gpa = used;
    q->desc = d;
    q->avail = a;
    q->used = u;
    return 0;
}

static int add_seg(struct virtq *q, struct virtq_chain *c, const struct virtq_desc *d)
{
    int write = !!(d->flags & VIRTQ_DESC_F_WRITE);
    if (c->nseg >= VIRTQ_MAX_SEGS)
        return -E2BIG;
    if (!write && c->nseg > c->nout)
        return -EINVAL;     /* a readable segment after a writable one */
    uint64_t total = c->out_len + c->in_len + d->len;
    if (total > VIRTQ_MAX_CHAIN_BYTES)
        return -EMSGSIZE;
    uint8_t *p = gmem_ptr(q->mem, d->addr, d->len);
    if (!p)
        return -EFAULT;
    struct virtq_seg *s = &c->seg[c->nseg++];
    s->hva = p;
    s->gpa = d->addr;
    s->len = d->len;
    s->write = write;
    if (write) {
        c->in_len += d->len;
    } else {
        c->nout++;
        c->out_len += d->len;
    }
    return 0;
}

static void read_desc(const struct virtq_desc *table, uint32_t i, struct virtq_desc *out)
{
    /* one copy: the guest may rewrite the table concurrently */
    const volatile struct virtq_desc *v = &table[i];
    out->addr = v->addr;
    out->len = v->len;
    out->flags = v->flags;
    out->next = v->next;
}

static int walk(struct virtq *q, struct virtq_chain *c, uint16_t head)
{
    const struct virtq_desc *table = q->desc;
    uint32_t tsize = q->size, ttl = q->size, i = head;
    int indirect = 0;

    for (;;) {
        struct virtq_desc d;
        if (ttl-- == 0)
            return -ELOOP;
        read_desc(table, i, &d);
        if (d.flags & VIRTQ_DESC_F_INDIRECT) {
            if (indirect || (d.flags & VIRTQ_DESC_F_NEXT))
                return -EINVAL;
            if (d.len == 0 || (d.len & 15) || d.len / 16 > VIRTQ_MAX_INDIRECT)
                return -EINVAL;
            table = gmem_ptr(q->mem, d.addr, d.len);
            if (!table)
                return -EFAULT;
            tsize = ttl = d.len / 16;
            i = 0;
            indirect = 1;
            continue;
        }
        int rc = add_seg(q, c, &d);
        if (rc < 0)
            return rc;
        if (!(d.flags & VIRTQ_DESC_F_NEXT))
            return 0;
        if (d.next >= tsize)
            return -EINVAL;
        i = d.next;
    }
}

int virtq_pop(struct virtq *q, struct virtq_chain *c)
{
    if (!q->size)
        return 0;
    uint16_t idx = __atomic_load_n(&q->avail[1], __ATOMIC_ACQUIRE);
    if (idx == q->last_avail)
        return 0;
    if ((uint16_t)(idx - q->last_avail) > q->size)
        return -EINVAL;     /* the driver claims more new entries than the ring holds */
    uint16_t head = q->avail[2 + q->last_avail % q->size];
    if (head >= q->size)
        return -EINVAL;
    q->last_avail++;
    c->head = head;
    c->nseg = c->nout = 0;
    c->out_len = c->in_len = 0;
    int rc = walk(q, c, head);
    return rc < 0 ? rc : 1;
}

void virtq_unpop(struct virtq *q)
{
    q->last_avail--;
}

void virtq_push(struct virtq *q, uint16_t head, uint32_t len)
{
    volatile uint32_t *elem = (volatile uint32_t *)(q->used + 4 + 8 * (q->used_idx % q->size));
    elem[0] = head;
    elem[1] = len;
    q->used_idx++;
    __atomic_store_n((uint16_t *)(q->used + 2), q->used_idx, __ATOMIC_RELEASE);
}

int virtq_needs_interrupt(struct virtq *q)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);    /* used idx visible before reading flags */
    return !(q->avail[0] & VIRTQ_AVAIL_F_NO_INTERRUPT);
}

/* --- copying to and from a chain --- */

static uint64_t chain_copy(const struct virtq_chain *c, int in, uint64_t off, uint8_t *buf,
                           uint64_t len, int to_guest)
{
    int from = in ? c->nout : 0, to = in ? c->nseg : c->nout;
    uint64_t done = 0;
    for (int i = from; i < to && done < len; i++) {
        const struct virtq_seg *s = &c->seg[i];
        if (off >= s->len) {
            off -= s->len;
            continue;
        }
        uint64_t n = s->len - off;
        if (n > len - done)
            n = len - done;
        if (to_guest)
            memcpy(s->hva + off, buf + done, n);
        else
            memcpy(buf + done, s->hva + off, n);
        done += n;
        off = 0;
    }
    return done;
}

uint64_t chain_read(const struct virtq_chain *c, uint64_t off, void *buf, uint64_t len)
{
    return chain_copy(c, 0, off, buf, len, 0);
}

uint64_t chain_write(const struct virtq_chain *c, uint64_t off, const void *buf, uint64_t len)
{
    return chain_copy(c, 1, off, (uint8_t *)buf, len, 1);
}

int chain_iov(const struct virtq_chain *c, int in, uint64_t off, uint64_t len,
              struct iovec *iov, int max)
{
    int from = in ? c->nout : 0, to = in ? c->nseg : c->nout, n = 0;
    for (int i = from; i < to && len > 0 && n < max; i++) {
        const struct virtq_seg *s = &c->seg[i];
        if (off >= s->len) {
            off -= s->len;
            continue;
        }
        uint64_t k = s->len - off;
        if (k > len)
            k = len;
        iov[n].iov_base = s->hva + off;
        iov[n].iov_len = k;
        n++;
        len -= k;
        off = 0;
    }
    return n;
}

/* --- the stand-alone form for unit tests --- */

struct kvmvm_virtq {
    struct virtq q;
    struct virtq_chain c;
};

kvmvm_virtq *kvmvm_virtq_new(kvmvm_gmem *gm, uint16_t size, uint64_t desc, uint64_t avail,
                             uint64_t used, int *err)
{
    struct kvmvm_virtq *vq = calloc(1, sizeof(*vq));
    int rc = vq ? virtq_setup(&vq->q, gm, size, desc, avail, used) : -ENOMEM;
    if (rc < 0) {
        free(vq);
        if (err)
            *err = rc;
        return NULL;
    }
    return vq;
}

void kvmvm_virtq_free(kvmvm_virtq *vq)
{
    free(vq);
}

int kvmvm_virtq_pop(kvmvm_virtq *vq, struct kvmvm_virtq_seg *segs, int max, uint32_t *head)
{
    int rc = virtq_pop(&vq->q, &vq->c);
    if (rc <= 0)
        return rc;
    *head = vq->c.head;
    for (int i = 0; i < vq->c.nseg && i < max; i++) {
        segs[i].addr = vq->c.seg[i].gpa;
        segs[i].len = vq->c.seg[i].len;
        segs[i].write = vq->c.seg[i].write;
    }
    return vq->c.nseg;
}

int kvmvm_virtq_push(kvmvm_virtq *vq, uint32_t head, uint32_t len)
{
    if (head >= vq->q.size)
        return -EINVAL;
    virtq_push(&vq->q, head, len);
    return 0;
}
