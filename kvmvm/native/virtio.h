/*
 * virtio (1.x, split rings) internals: the virtqueue walker, the one device interface,
 * the virtio-mmio transport and the worker thread that runs every device's data path.
 */
#ifndef KVMVM_VIRTIO_H
#define KVMVM_VIRTIO_H

#include <stdint.h>
#include <sys/uio.h>

#include "internal.h"
#include "api_virtio.h"

/* --- virtqueue (virtq.c) --- */
#define VIRTQ_DESC_F_NEXT      1
#define VIRTQ_DESC_F_WRITE     2
#define VIRTQ_DESC_F_INDIRECT  4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

#define VIRTQ_MAX_SIZE        1024          /* largest queue a device offers */
#define VIRTQ_MAX_SEGS        1024          /* segments in one chain, indirect ones included */
#define VIRTQ_MAX_INDIRECT    1024          /* descriptors in one indirect table */
#define VIRTQ_MAX_CHAIN_BYTES (64u << 20)   /* total length of one chain */

struct virtq {
    struct kvmvm_gmem *mem;
    uint16_t size;                  /* 0: not configured */
    uint64_t desc_gpa, avail_gpa, used_gpa;
    /* host pointers, checked once when the queue becomes ready (guest RAM never moves) */
    struct virtq_desc *desc;
    volatile uint16_t *avail;       /* flags, idx, ring[size] */
    volatile uint8_t *used;         /* flags, idx, ring[size] of {u32 id, u32 len} */
    uint16_t last_avail;
    uint16_t used_idx;
};

struct virtq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct virtq_seg {
    uint8_t *hva;
    uint64_t gpa;
    uint32_t len;
    uint32_t write;
};

/* One popped chain: readable segments first, then writable ones (the order virtio requires). */
struct virtq_chain {
    uint16_t head;
    int nseg, nout;                 /* nout: how many leading segments are device-readable */
    uint64_t out_len, in_len;
    struct virtq_seg seg[VIRTQ_MAX_SEGS];
};

/* -EFAULT if a ring lies outside guest memory, -EINVAL for a bad size */
int virtq_setup(struct virtq *q, struct kvmvm_gmem *mem, uint16_t size,
                uint64_t desc, uint64_t avail, uint64_t used);
/* 1 and *c filled, 0 when the ring is empty, -errno when the chain is malformed */
int virtq_pop(struct virtq *q, struct virtq_chain *c);
void virtq_unpop(struct virtq *q);
void virtq_push(struct virtq *q, uint16_t head, uint32_t len);
int virtq_needs_interrupt(struct virtq *q);

/* Copy between a chain's readable (out) / writable (in) bytes and a buffer, from offset. */
uint64_t chain_read(const struct virtq_chain *c, uint64_t off, void *buf, uint64_t len);
uint64_t chain_write(const struct virtq_chain *c, uint64_t off, const void *buf, uint64_t len);
/* iovecs over [off, off+len) of the out or in side; returns how many (<= max) */
int chain_iov(const struct virtq_chain *c, int in, uint64_t off, uint64_t len,
              struct iovec *iov, int max);

/* --- the device interface (one per device file) --- */
#define VIRTIO_MAX_QUEUES 4

#define VIRTIO_STATUS_ACK          1
#define VIRTIO_STATUS_DRIVER       2
#define VIRTIO_STATUS_DRIVER_OK    4
#define VIRTIO_STATUS_FEATURES_OK  8
#define VIRTIO_STATUS_NEEDS_RESET  64
#define VIRTIO_STATUS_FAILED       128

#define VIRTIO_F_INDIRECT_DESC     28
#define VIRTIO_F_VERSION_1         32
#define VIRTIO_INT_VRING           1
#define VIRTIO_INT_CONFIG          2

struct virtio_dev;

struct virtio_dev_ops {
    const char *name;
    uint32_t device_id;
    int nqueues;
    uint16_t queue_max;
    uint32_t config_len;
    /* config space reads/writes at 0x100+ (offset relative to 0x100, bounds checked) */
    void (*config_read)(struct virtio_dev *d, uint32_t off, uint8_t *data, uint32_t len);
    void (*config_write)(struct virtio_dev *d, uint32_t off, const uint8_t *data, uint32_t len);
    /* on the worker thread: register backend fds (activate), react to kicks and fds */
    int (*activate)(struct virtio_dev *d);
    void (*queue_notify)(struct virtio_dev *d, int q);
    void (*fd_event)(struct virtio_dev *d, uint64_t tag, uint32_t events);
    /* after each batch of events (free what the batch's events might still name) */
    void (*idle)(struct virtio_dev *d);
    /* after the worker stopped (reset or end): drop per-session state */
    void (*deactivate)(struct virtio_dev *d);
    /* ms until the device's next deadline (idle runs then), -1 for none */
    int (*timeout_ms)(struct virtio_dev *d);
    /* after a snapshot's state was loaded, before the worker starts (virtio_state.c) */
    void (*restored)(struct virtio_dev *d);
    void (*destroy)(struct virtio_dev *d);
};

struct virtio_dev {
    struct kvmvm_device dev;        /* what the MMIO bus sees */
    struct kvmvm_vm *vm;            /* NULL for a stand-alone device */
    struct kvmvm_gmem *mem;
    const struct virtio_dev_ops *ops;
    void *priv;
    uint64_t base;
    int irq;
    int flags;                      /* KVMVM_VIRTIO_NO_* */

    pthread_mutex_t lock;           /* register access from vCPUs */
    uint64_t dev_features, drv_features;
    uint32_t dev_feat_sel, drv_feat_sel, queue_sel;
    atomic_uint status;
    atomic_uint isr;
    uint32_t config_generation;
    struct virtq q[VIRTIO_MAX_QUEUES];
    uint16_t qnum[VIRTIO_MAX_QUEUES];
    int qready[VIRTIO_MAX_QUEUES];
    uint64_t qaddr[VIRTIO_MAX_QUEUES][3];

    /* notifications and interrupts */
    int kick_fd[VIRTIO_MAX_QUEUES]; /* eventfds, KVM_IOEVENTFD-bound when the host can */
    int ioeventfd;                  /* 1 when QueueNotify writes never reach the exit path */
    int irq_fd;                     /* KVM_IRQFD-bound eventfd, or -1: KVM_IRQ_LINE */
    pthread_mutex_t irq_lock;
    int irq_level;

    /* the worker */
    int ep_fd, stop_fd;
    pthread_t worker;
    int running;
    atomic_int stopping;            /* the worker must return: checked between chains */
    pthread_mutex_t dp_lock;        /* held by the worker around every data-path call */
    struct virtq_chain *chain;      /* scratch chain for the worker */
    pthread_mutex_t park_lock;      /* pause: the worker parks between batches */
    pthread_cond_t park_cond;
    int park_req, parked;

    char broken_why[96];
    atomic_ullong kicks, requests, interrupts, bytes_in, bytes_out;
};

/* transport (virtio_mmio.c) */
int virtio_mmio_add(struct kvmvm_vm *vm, uint64_t base, int irq, int flags,
                    const struct virtio_dev_ops *ops, void *priv, uint64_t features);
void virtio_interrupt(struct virtio_dev *d, uint32_t why);
/* A malformed request: DEVICE_NEEDS_RESET, a config-change interrupt, no more processing. */
void virtio_set_broken(struct virtio_dev *d, const char *why);
int virtio_broken(struct virtio_dev *d);
/* virtio_set_broken with the reason a virtq_pop failed */
void virtio_bad_chain(struct virtio_dev *d, int q, int rc);
/* after processing a queue: interrupt unless the driver asked not to */
void virtio_queue_done(struct virtio_dev *d, int q);
struct virtio_dev *virtio_find(struct kvmvm_vm *vm, uint64_t base);
/* the virtio transport behind a bus device, or NULL */
struct virtio_dev *virtio_of(struct kvmvm_device *dev);

/* worker (virtio_worker.c): one thread per active device, epoll over kicks + backend fds */
#define VIRTIO_TAG_STOP 0xffffu

/*
 * The one drain loop every device uses: pop -> handle -> push -> notify, at most one
 * queue's worth of chains (and VIRTIO_PASS_BYTES) per pass. When the budget runs out with
 * chains left, the queue's own kick eventfd is re-armed and the worker goes back to epoll,
 * so a guest that keeps refilling its ring cannot hold the worker (or a stop) hostage.
 * A handler returns the bytes it wrote into the chain (the used length), or VIRTIO_RETRY
 * to put the chain back and end the pass (the backend cannot take more now).
 */
#define VIRTIO_RETRY        (-1)
#define VIRTIO_PASS_BYTES   (32ull << 20)
enum { DRAIN_EMPTY, DRAIN_RETRY, DRAIN_BUDGET, DRAIN_STOP, DRAIN_BROKEN };
typedef int64_t (*virtio_handler)(struct virtio_dev *d, struct virtq_chain *c, void *arg);
int virtio_drain(struct virtio_dev *d, int q, virtio_handler fn, void *arg);
/* Make the worker look at queue q again after the events in hand. */
void virtio_rearm(struct virtio_dev *d, int q);
int virtio_stopping(struct virtio_dev *d);
int virtio_worker_start(struct virtio_dev *d);
void virtio_worker_stop(struct virtio_dev *d);
int virtio_worker_watch(struct virtio_dev *d, int fd, uint32_t events, uint64_t tag);
int virtio_worker_modify(struct virtio_dev *d, int fd, uint32_t events, uint64_t tag);
void virtio_worker_unwatch(struct virtio_dev *d, int fd);
/* park (1): returns once the worker sleeps between batches; unpark (0) */
void virtio_worker_park(struct virtio_dev *d, int park);

/* eventfd plumbing into KVM (virtio_kvm.c) */
int virtio_kvm_ioeventfd(struct virtio_dev *d, int q, int assign);
int virtio_kvm_irqfd(struct virtio_dev *d, int assign);

#endif
