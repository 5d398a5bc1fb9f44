/* A minimal polling virtio-mmio (version 2) driver for tiny guests. */
#ifndef TINY_VIRTIO_H
#define TINY_VIRTIO_H

#include <stdint.h>

#define VIRTIO_ID_NET		1
#define VIRTIO_ID_BLK		2
#define VIRTIO_ID_RNG		4
#define VIRTIO_ID_VSOCK		19

#define VIRTIO_MMIO_MAGIC	0x000
#define VIRTIO_MMIO_VERSION	0x004
#define VIRTIO_MMIO_DEVICE_ID	0x008
#define VIRTIO_MMIO_DEV_FEAT	0x010
#define VIRTIO_MMIO_DEV_FEAT_SEL 0x014
#define VIRTIO_MMIO_DRV_FEAT	0x020
#define VIRTIO_MMIO_DRV_FEAT_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL	0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM	0x038
#define VIRTIO_MMIO_QUEUE_READY	0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INT_STATUS	0x060
#define VIRTIO_MMIO_INT_ACK	0x064
#define VIRTIO_MMIO_STATUS	0x070
#define VIRTIO_MMIO_QUEUE_DESC	0x080
#define VIRTIO_MMIO_QUEUE_AVAIL	0x090
#define VIRTIO_MMIO_QUEUE_USED	0x0a0
#define VIRTIO_MMIO_CONFIG	0x100

#define VIRTIO_S_ACK		1
#define VIRTIO_S_DRIVER		2
#define VIRTIO_S_DRIVER_OK	4
#define VIRTIO_S_FEATURES_OK	8
#define VIRTIO_S_NEEDS_RESET	64
#define VIRTIO_S_FAILED		128

#define VIRTIO_F_INDIRECT_DESC	28
#define VIRTIO_F_VERSION_1	32

#define VRING_F_NEXT		1
#define VRING_F_WRITE		2
#define VRING_F_INDIRECT	4

struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct vdev {
	uint64_t base;
	int irq;
	uint32_t device_id;
	uint64_t features;	/* negotiated */
};

struct vq {
	struct vdev *dev;
	int index;
	uint16_t size;
	struct vring_desc *desc;
	volatile uint16_t *avail;	/* flags, idx, ring[] */
	volatile uint8_t *used;		/* flags, idx, ring[] {u32 id, u32 len} */
	uint16_t next_desc;
	uint16_t last_used;
};

/* one buffer of a chain */
struct vbuf {
	uint64_t addr;
	uint32_t len;
	int write;
};

static inline uint32_t vreg_read(struct vdev *d, uint32_t off)
{
	return mmio_read32(d->base + off);
}

static inline void vreg_write(struct vdev *d, uint32_t off, uint32_t v)
{
	mmio_write32(d->base + off, v);
}

/* Fill out[] with the virtio-mmio devices on the command line; returns how many. */
int virtio_scan(const char *cmdline, struct vdev *out, int max);
/* The index'th device with this ID (0-based), or -1. */
int virtio_find(const char *cmdline, uint32_t device_id, int index, struct vdev *out);
/* reset, ACK, DRIVER, features (VERSION_1 | want), FEATURES_OK; 0 or -1 */
int virtio_init(struct vdev *d, uint64_t want);
int vq_setup(struct vdev *d, struct vq *q, int index, uint16_t size);
void virtio_driver_ok(struct vdev *d);
uint32_t virtio_status(struct vdev *d);
/* Put a chain (direct descriptors) on the ring; returns its head. */
int vq_add(struct vq *q, const struct vbuf *b, int n);
/* The same through one indirect table (table: 16 * n bytes of guest RAM). */
int vq_add_indirect(struct vq *q, const struct vbuf *b, int n, struct vring_desc *table);
/* A one-buffer chain in descriptor slot 'at' (receive buffers that are reposted in place). */
void vq_add_at(struct vq *q, uint16_t at, const struct vbuf *b);
/* Publish raw descriptors as they are (adversarial guests): head goes on the avail ring. */
void vq_publish(struct vq *q, uint16_t head);
void vq_kick(struct vq *q);
/* Wait for a used element: 0 and *id and *len; -1 after max_ms or if the device broke. */
int vq_wait(struct vq *q, uint32_t *id, uint32_t *len, unsigned int max_ms);
/* Non-blocking: 1 (and *id, *len) when a used element is there, else 0. */
int vq_poll(struct vq *q, uint32_t *id, uint32_t *len);

/* crude time: TSC ticks per ms, measured against nothing (assumes >= 1 GHz) */
uint64_t tiny_ms_to_tsc(unsigned int ms);

#endif
