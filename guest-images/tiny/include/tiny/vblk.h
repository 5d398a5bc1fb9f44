/* virtio-blk on top of tiny/virtio.h: one request at a time, polled. */
#ifndef TINY_VBLK_H
#define TINY_VBLK_H

#include "tiny/virtio.h"

#define VBLK_T_IN	0
#define VBLK_T_OUT	1
#define VBLK_T_FLUSH	4
#define VBLK_T_GET_ID	8
#define VBLK_F_RO	5
#define VBLK_F_FLUSH	9

struct vblk_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

struct vblk {
	struct vdev dev;
	struct vq q;
	uint64_t capacity;	/* sectors */
	int ro;
	struct vblk_hdr *hdr;
	volatile uint8_t *status;
	struct vring_desc *itable;
};

/* Find and set up the index'th virtio-blk device: 0 or -1. */
int vblk_open(struct vblk *b, const char *cmdline, int index);
/*
 * One request; buf/len is the data (len 0 for flush). nseg > 1 splits the data into that
 * many descriptors; indirect puts the chain in an indirect table. Returns the status
 * byte (0 ok, 1 IOERR, 2 UNSUPP) or -1 when no answer came.
 */
int vblk_req(struct vblk *b, uint32_t type, uint64_t sector, void *buf, uint32_t len,
	     int nseg, int indirect);

#endif
