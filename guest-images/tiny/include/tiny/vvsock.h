/* virtio-vsock on top of tiny/virtio.h: the three queues, the guest CID, one-packet send. */
#ifndef TINY_VVSOCK_H
#define TINY_VVSOCK_H

#include "tiny/virtio.h"

#define VSOCK_OP_REQUEST	1
#define VSOCK_OP_RESPONSE	2
#define VSOCK_OP_RST		3
#define VSOCK_OP_SHUTDOWN	4
#define VSOCK_OP_RW		5
#define VSOCK_OP_CREDIT_UPDATE	6
#define VSOCK_OP_CREDIT_REQUEST	7
#define VSOCK_SLOT		4096	/* one receive slot, and the transmit buffer */
#define VSOCK_HOST_CID		2

struct vsock_hdr {
	uint64_t src_cid, dst_cid;
	uint32_t src_port, dst_port, len;
	uint16_t type, op;
	uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

struct vsock {
	struct vdev dev;
	struct vq rx, tx, ev;
	uint64_t cid;		/* ours, from the device's config */
	uint8_t *rxbuf;		/* rx.size slots of VSOCK_SLOT */
	uint8_t *txbuf;		/* VSOCK_SLOT */
};

/*
 * Find and set up the first virtio-vsock device: rx (nrx descriptors), tx and event
 * queues, the CID, the buffers. No receive buffer is posted and the driver is not OK yet.
 * 0, or -1 with a "FAIL ..." line printed.
 */
int vsock_open(struct vsock *v, const char *cmdline, uint16_t nrx);
/* Post every receive slot as a buffer of size bytes (no kick). */
void vsock_post_rx(struct vsock *v, uint32_t size);
/* Receive slot of a used element's id, and its packet. */
struct vsock_hdr *vsock_rx_pkt(struct vsock *v, uint32_t id);
/* Give the receive slot at id back (a whole VSOCK_SLOT), then kick. */
void vsock_recycle(struct vsock *v, uint32_t id);
/*
 * One stream packet to the host: *h (ports, op, flags, buf_alloc, fwd_cnt; CIDs, type and
 * len are filled in) followed by len bytes of data. Waits for the device: 0 or -1.
 */
int vsock_send(struct vsock *v, const struct vsock_hdr *h, const void *data, uint32_t len);

#endif
