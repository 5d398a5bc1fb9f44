/*
 * virtio-blk (device 2) over a raw image file: read, write, flush (fdatasync: what the
 * guest flushed is on disk), get-id. A read-only drive answers writes with IOERR.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/fs.h>

#include "virtio.h"

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

struct blk {
    int fd;
    int ro;
    uint64_t sectors;
    char id[BLK_ID_BYTES];
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
        int n = chain_iov(c, 1, 0, in_data, b->iov, VIRTQ_MAX_SEGS);
        if (blk_io(b->fd, b->iov, n, h.sector * SECTOR, 0) == 0) {
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
        int n = chain_iov(c, 0, sizeof(h), len, b->iov, VIRTQ_MAX_SEGS);
        if (blk_io(b->fd, b->iov, n, h.sector * SECTOR, 1) == 0) {
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

static void blk_notify(struct virtio_dev *d, int qi)
{
    virtio_drain(d, qi, blk_request, d->priv);
}

static void blk_destroy(struct virtio_dev *d)
{
    struct blk *b = d->priv;
    if (!b)
        return;
    if (b->fd >= 0)
        close(b->fd);
    free(b);
}

static const struct virtio_dev_ops blk_ops = {
    .name = "virtio-blk",
    .device_id = KVMVM_VIRTIO_ID_BLK,
    .nqueues = 1,
    .queue_max = BLK_QUEUE_MAX,
    .config_len = 24,
    .config_read = blk_config_read,
    .queue_notify = blk_notify,
    .destroy = blk_destroy,
};

int kvmvm_vm_add_virtio_blk(kvmvm_vm *vm, uint64_t base, int irq, int flags,
                            const char *path, int readonly, const char *serial)
{
    struct blk *b = calloc(1, sizeof(*b));
    struct stat st;
    if (!b)
        return -ENOMEM;
    b->ro = !!readonly;
    b->fd = open(path, (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (b->fd < 0 || fstat(b->fd, &st) < 0) {
        int e = -errno;
        if (b->fd >= 0)
            close(b->fd);
        free(b);
        return e;
    }
    uint64_t bytes = (uint64_t)st.st_size;
    /* a block device's st_size is 0: ask the device */
    if (S_ISBLK(st.st_mode) && ioctl(b->fd, BLKGETSIZE64, &bytes) < 0) {
        int e = -errno;
        close(b->fd);
        free(b);
        return e;
    }
    b->sectors = bytes / SECTOR;
    if (serial)     /* not NUL-terminated when 20 long, as virtio allows */
        memcpy(b->id, serial, strnlen(serial, BLK_ID_BYTES));
    uint64_t features = (1ull << VIRTIO_BLK_F_FLUSH) | (1ull << VIRTIO_BLK_F_SEG_MAX) |
                        (b->ro ? 1ull << VIRTIO_BLK_F_RO : 0);
    return virtio_mmio_add(vm, base, irq, flags, &blk_ops, b, features);
}
