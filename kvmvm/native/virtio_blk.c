/*
 * virtio-blk (device 2) over a raw image file: read, write, flush (fdatasync: what the
 * guest flushed is on disk), get-id. A read-only drive answers writes with IOERR.
 *
 * A direct drive opens its file with O_DIRECT (no host page cache). O_DIRECT takes only
 * buffers, lengths and offsets aligned to what the file system asks (statx DIOALIGN), and a
 * guest's descriptors may point anywhere: a request whose segments are aligned goes straight
 * between guest RAM and the file; one with unaligned segments is copied through an aligned
 * bounce buffer; one whose file offset or length O_DIRECT cannot address at all (a 512-byte
 * request on a 4096-byte-sector disk) goes through a second, buffered descriptor of the same
 * file (the kernel keeps the two coherent: direct I/O writes back and drops cached pages of
 * the range first). No request is refused or altered for its alignment.
 */
#define _GNU_SOURCE     /* dup3 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/fs.h>

#include "virtio.h"
#include "rate_limiter.h"

#define VIRTIO_BLK_F_SEG_MAX  2
#define VIRTIO_BLK_F_RO       5
#define VIRTIO_BLK_F_FLUSH    9

#define VIRTIO_BLK_T_IN       0
#define VIRTIO_BLK_T_OUT      1
#define VIRTIO_BLK_T_FLUSH    4
#define VIRTIO_BLK_T_GET_ID   8

#define VIRTIO_BLK_S_OK       0
#define VIRTIO_BLK_S_IOERR    1
#define VIRTIO_BLK_S_UNSUPP   2

#define SECTOR 512ull
#define BLK_QUEUE_MAX 256
#define BLK_ID_BYTES 20
#define BLK_TAG_RATE_LIMIT 0x100     /* the rate limiter's timerfd in the worker's epoll */
#define BLK_BOUNCE (256u << 10)      /* a direct drive's bounce buffer */
#define BLK_ALIGN_DEFAULT 4096u      /* when the file system does not say (safe for all) */

struct blk {
    int fd;             /* O_DIRECT on a direct drive */
    int bfd;            /* direct: the same file through the page cache; else -1 */
    int ro, direct;
    uint32_t mem_align, off_align;  /* direct: O_DIRECT's rules for buffers and offsets */
    uint8_t *bounce;    /* direct: BLK_BOUNCE bytes aligned for O_DIRECT */
    uint64_t sectors;
    char id[BLK_ID_BYTES];
    struct rate_limiter rl;
    struct iovec iov[VIRTQ_MAX_SEGS];
};

struct blk_req_hdr {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

static void blk_config_read(struct virtio_dev *d, uint32_t off, uint8_t *data, uint32_t len)
{
    struct blk *b = d->priv;
    uint8_t cfg[24] = { 0 };
    uint32_t seg_max = BLK_QUEUE_MAX - 2;
    memcpy(cfg, &b->sectors, 8);        /* capacity, in 512-byte sectors */
    memcpy(cfg + 12, &seg_max, 4);
    memcpy(data, cfg + off, len);
}

/* the whole of iov at file offset off, through short transfers */
static int blk_io(int fd, struct iovec *iov, int n, uint64_t off, int write)
{
    while (n > 0) {
        ssize_t r = write ? pwritev(fd, iov, n, (off_t)off) : preadv(fd, iov, n, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0) {   /* past the end of the file: reads see zeros */
            if (write)
                return -EIO;
            for (int i = 0; i < n; i++)
                memset(iov[i].iov_base, 0, iov[i].iov_len);
            return 0;
        }
        off += (uint64_t)r;
        while (n > 0 && (size_t)r >= iov->iov_len) {
            r -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + r;
            iov->iov_len -= r;
        }
    }
    return 0;
}

static int iov_aligned(const struct iovec *iov, int n, uint32_t mem_align, uint32_t off_align)
{
    for (int i = 0; i < n; i++)
        if ((uintptr_t)iov[i].iov_base % mem_align || iov[i].iov_len % off_align)
            return 0;
    return 1;
}

/* a direct drive's transfer through the bounce buffer, in BLK_BOUNCE pieces */
static int blk_bounce(struct blk *b, const struct virtq_chain *c, int write, uint64_t coff,
                      uint64_t len, uint64_t pos)
{
    for (uint64_t done = 0; done < len;) {
        uint64_t n = len - done < BLK_BOUNCE ? len - done : BLK_BOUNCE;
        struct iovec v = { b->bounce, n };
        if (write && chain_read(c, coff + done, b->bounce, n) != n)
            return -EIO;
        int rc = blk_io(b->fd, &v, 1, pos + done, write);
        if (rc < 0)
            return rc;
        if (!write && chain_write(c, coff + done, b->bounce, n) != n)
            return -EIO;
        done += n;
    }
    return 0;
}

/*
 * len bytes of the request's data, at coff of its out (write) or in (read) side, to or
 * from file offset pos. A direct drive tries, in order: straight O_DIRECT, the bounce
 * buffer, the buffered descriptor (each next one when the one before cannot take it).
 */
static int blk_xfer(struct blk *b, const struct virtq_chain *c, int write, uint64_t coff,
                    uint64_t len, uint64_t pos)
{
    int n = chain_iov(c, !write, coff, len, b->iov, VIRTQ_MAX_SEGS);
    if (!b->direct)
        return blk_io(b->fd, b->iov, n, pos, write);
    int rc = -EINVAL;
    if ((pos | len) % b->off_align == 0) {
        if (iov_aligned(b->iov, n, b->mem_align, b->off_align))
            rc = blk_io(b->fd, b->iov, n, pos, write);
        if (rc == -EINVAL)      /* unaligned segments (or stricter rules than statx said) */
            rc = blk_bounce(b, c, write, coff, len, pos);
        if (rc != -EINVAL)
            return rc;
    }
    n = chain_iov(c, !write, coff, len, b->iov, VIRTQ_MAX_SEGS);    /* blk_io moved them */
    return blk_io(b->bfd, b->iov, n, pos, write);
}

static int in_range(struct blk *b, uint64_t sector, uint64_t len)
{
    return sector <= b->sectors && len <= (b->sectors - sector) * SECTOR;
}

/* one request: returns the bytes written into the guest's buffers */
static int64_t blk_request(struct virtio_dev *d, struct virtq_chain *c, void *arg)
{
    struct blk *b = arg;
    struct blk_req_hdr h;
    uint8_t status = VIRTIO_BLK_S_IOERR;
    uint64_t data_in = 0;

    if (c->in_len < 1)
        return 0;   /* nowhere to put a status: drop it */
    uint64_t in_data = c->in_len - 1;
    if (chain_read(c, 0, &h, sizeof(h)) != sizeof(h))
        goto out;
    switch (h.type) {
    case VIRTIO_BLK_T_IN: {
        if (!in_range(b, h.sector, in_data))
            break;
        if (blk_xfer(b, c, 0, 0, in_data, h.sector * SECTOR) == 0) {
            status = VIRTIO_BLK_S_OK;
            data_in = in_data;
            atomic_fetch_add_explicit(&d->bytes_in, in_data, memory_order_relaxed);
        }
        break;
    }
    case VIRTIO_BLK_T_OUT: {
        uint64_t len = c->out_len - sizeof(h);
        if (b->ro || !in_range(b, h.sector, len))
            break;
        if (blk_xfer(b, c, 1, sizeof(h), len, h.sector * SECTOR) == 0) {
            status = VIRTIO_BLK_S_OK;
            atomic_fetch_add_explicit(&d->bytes_out, len, memory_order_relaxed);
        }
        break;
    }
    case VIRTIO_BLK_T_FLUSH:
        if (b->ro || fdatasync(b->fd) == 0)
            status = VIRTIO_BLK_S_OK;
        break;
    case VIRTIO_BLK_T_GET_ID:
        data_in = chain_write(c, 0, b->id, in_data < BLK_ID_BYTES ? in_data : BLK_ID_BYTES);
        status = VIRTIO_BLK_S_OK;
        break;
    default:
        status = VIRTIO_BLK_S_UNSUPP;
        break;
    }
out:
    chain_write(c, in_data, &status, 1);
    return (int64_t)data_in + 1;
}

/* blk_request behind the rate limiter: a request without its tokens waits in the ring */
static int64_t blk_limited(struct virtio_dev *d, struct virtq_chain *c, void *arg)
{
    struct blk *b = arg;
    /* the data bytes (a read's or a write's), for the bandwidth bucket */
    uint64_t bytes = (c->out_len > sizeof(struct blk_req_hdr) ? c->out_len - sizeof(struct blk_req_hdr) : 0) +
                     (c->in_len > 1 ? c->in_len - 1 : 0);
    if (!rl_consume(&b->rl, bytes))
        return VIRTIO_RETRY;    /* retried when the rate limiter's timer fires */
    return blk_request(d, c, arg);
}

static void blk_notify(struct virtio_dev *d, int qi)
{
    virtio_drain(d, qi, blk_limited, d->priv);
}

static int blk_activate(struct virtio_dev *d)
{
    struct blk *b = d->priv;
    return virtio_worker_watch(d, b->rl.timer_fd, EPOLLIN, BLK_TAG_RATE_LIMIT);
}

static void blk_fd_event(struct virtio_dev *d, uint64_t tag, uint32_t events)
{
    struct blk *b = d->priv;
    (void)events;
    if (tag != BLK_TAG_RATE_LIMIT)
        return;
    rl_timer_ack(&b->rl);
    if (d->q[0].size)
        blk_notify(d, 0);
}

static void blk_free(struct blk *b);

static void blk_destroy(struct virtio_dev *d)
{
    struct blk *b = d->priv;
    if (!b)
        return;
    blk_free(b);
}

static const struct virtio_dev_ops blk_ops = {
    .name = "virtio-blk",
    .device_id = KVMVM_VIRTIO_ID_BLK,
    .nqueues = 1,
    .queue_max = BLK_QUEUE_MAX,
    .config_len = 24,
    .config_read = blk_config_read,
    .activate = blk_activate,
    .queue_notify = blk_notify,
    .fd_event = blk_fd_event,
    .destroy = blk_destroy,
};

/* O_DIRECT's alignment rules for fd (0 or -errno) */
static int blk_dio_align(struct blk *b, int fd, const struct stat *st)
{
    struct statx sx;
    unsigned int lbs = 0;
    b->mem_align = b->off_align = 0;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN)) {
        if (!sx.stx_dio_offset_align)
            return -EOPNOTSUPP;     /* the file system says: no direct I/O on this file */
        b->mem_align = sx.stx_dio_mem_align;
        b->off_align = sx.stx_dio_offset_align;
    } else if (S_ISBLK(st->st_mode) && ioctl(fd, BLKSSZGET, &lbs) == 0 && lbs) {
        b->mem_align = b->off_align = lbs;
    }
    if (!b->mem_align)
        b->mem_align = BLK_ALIGN_DEFAULT;
    if (!b->off_align)
        b->off_align = BLK_ALIGN_DEFAULT;
    /* powers of two no larger than the bounce buffer, which must hold aligned pieces */
    if (b->mem_align & (b->mem_align - 1) || b->off_align & (b->off_align - 1) ||
        b->mem_align > BLK_BOUNCE || b->off_align > BLK_BOUNCE)
        return -EOPNOTSUPP;
    return 0;
}

static void blk_free(struct blk *b)
{
    if (b->fd >= 0)
        close(b->fd);
    if (b->bfd >= 0)
        close(b->bfd);
    free(b->bounce);
    rl_destroy(&b->rl);
    free(b);
}

/* opens path as a drive of mode's kind: the fd (O_DIRECT for a direct drive) or -errno;
   -EOPNOTSUPP when the file system cannot do direct I/O */
static int blk_open(const char *path, int mode)
{
    int flags = (mode & KVMVM_BLK_RO ? O_RDONLY : O_RDWR) | O_CLOEXEC;
    int fd = open(path, flags | (mode & KVMVM_BLK_DIRECT ? O_DIRECT : 0));
    if (fd >= 0 || errno != EINVAL || !(mode & KVMVM_BLK_DIRECT))
        return fd < 0 ? -errno : fd;
    /* EINVAL from an open that works without O_DIRECT: the file system refuses it */
    fd = open(path, flags);
    if (fd < 0)
        return -errno;
    close(fd);
    return -EOPNOTSUPP;
}

int kvmvm_vm_add_virtio_blk(kvmvm_vm *vm, uint64_t base, int irq, int flags,
                            const char *path, int mode, const char *serial)
{
    struct blk *b = calloc(1, sizeof(*b));
    struct stat st;
    int rc;
    if (!b)
        return -ENOMEM;
    b->fd = b->bfd = -1;
    b->ro = !!(mode & KVMVM_BLK_RO);
    b->direct = !!(mode & KVMVM_BLK_DIRECT);
    rc = rl_init(&b->rl);
    if (rc < 0) {
        free(b);
        return rc;
    }
    rc = b->fd = blk_open(path, mode);
    if (rc < 0)
        goto fail;
    if (fstat(b->fd, &st) < 0) {
        rc = -errno;
        goto fail;
    }
    rc = -EINVAL;       /* a FIFO or a character device is no disk */
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        goto fail;
    uint64_t bytes = (uint64_t)st.st_size;
    /* a block device's st_size is 0: ask the device */
    if (S_ISBLK(st.st_mode) && ioctl(b->fd, BLKGETSIZE64, &bytes) < 0) {
        rc = -errno;
        goto fail;
    }
    if (b->direct) {
        rc = blk_dio_align(b, b->fd, &st);
        if (rc < 0)
            goto fail;
        rc = b->bfd = open(path, (b->ro ? O_RDONLY : O_RDWR) | O_CLOEXEC);
        if (rc < 0) {
            rc = -errno;
            goto fail;
        }
        rc = -ENOMEM;
        if (posix_memalign((void **)&b->bounce, b->mem_align < 4096 ? 4096 : b->mem_align, BLK_BOUNCE))
            goto fail;
    }
    b->sectors = bytes / SECTOR;
    if (serial)     /* not NUL-terminated when 20 long, as virtio allows */
        memcpy(b->id, serial, strnlen(serial, BLK_ID_BYTES));
    uint64_t features = (1ull << VIRTIO_BLK_F_FLUSH) | (1ull << VIRTIO_BLK_F_SEG_MAX) |
                        (b->ro ? 1ull << VIRTIO_BLK_F_RO : 0);
    return virtio_mmio_add(vm, base, irq, flags, &blk_ops, b, features);   /* frees b on failure */
fail:
    blk_free(b);
    return rc;
}

int kvmvm_vm_virtio_blk_swap(kvmvm_vm *vm, uint64_t base, const char *path)
{
    struct virtio_dev *d = virtio_find(vm, base);
    struct stat st;
    if (!d || d->ops != &blk_ops)
        return -ENODEV;
    struct blk *b = d->priv;
    if (b->direct)
        return -EOPNOTSUPP;     /* only Firecracker-API drives are swapped; none is direct */
    int fd = open(path, (b->ro ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
        int e = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
        close(fd);
        return e;
    }
    /* dup3 swaps the file behind b->fd atomically for the worker thread */
    if (dup3(fd, b->fd, O_CLOEXEC) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    close(fd);
    __atomic_store_n(&b->sectors, (uint64_t)st.st_size / SECTOR, __ATOMIC_RELEASE);
    pthread_mutex_lock(&d->lock);
    d->config_generation++;
    pthread_mutex_unlock(&d->lock);
    if (atomic_load(&d->status) & VIRTIO_STATUS_DRIVER_OK)
        virtio_interrupt(d, VIRTIO_INT_CONFIG);
    return 0;
}

int kvmvm_vm_virtio_blk_rate_limit(kvmvm_vm *vm, uint64_t base,
                                   const struct kvmvm_token_bucket *bandwidth,
                                   const struct kvmvm_token_bucket *ops)
{
    struct virtio_dev *d = virtio_find(vm, base);
    if (!d || d->ops != &blk_ops)
        return -ENODEV;
    rl_set(&((struct blk *)d->priv)->rl, bandwidth, ops);
    return 0;
}
