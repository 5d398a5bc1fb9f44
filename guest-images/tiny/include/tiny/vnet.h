/* virtio-net on top of tiny/virtio.h: MAC feature only, polled, fixed-size buffers. */
#ifndef TINY_VNET_H
#define TINY_VNET_H

#include "tiny/virtio.h"

#define VNET_HDR	12	/* virtio_net_hdr (VERSION_1: with num_buffers) */
#define VNET_BUF	2048	/* one receive or transmit slot */
#define VNET_F_MAC	5

struct vnet {
	struct vdev dev;
	struct vq rx, tx;
	uint8_t mac[6];
	uint8_t *rxbuf;		/* rx.size slots of VNET_BUF */
	uint8_t *txbuf;		/* tx.size slots of VNET_BUF */
	int broken;		/* vnet_recv saw DEVICE_NEEDS_RESET (and said so) */
};

/*
 * Find and set up the first virtio-net device: queues of nrx and ntx descriptors, the MAC,
 * one buffer slot per descriptor. The driver is not OK yet (vnet_post_rx, then
 * virtio_driver_ok, or the other way round). 0, or -1 with a "FAIL ..." line printed.
 */
int vnet_open(struct vnet *n, const char *cmdline, uint16_t nrx, uint16_t ntx);
/* Give every receive slot to the device, then kick. */
void vnet_post_rx(struct vnet *n);
/* Give receive slot back to the device, then kick. */
void vnet_recycle(struct vnet *n, uint32_t slot);
/* Send the frame of len bytes (Ethernet header on, virtio header off; padded to 60) that
   follows the virtio header in transmit slot 0, and wait for the device: 0 or -1. */
int vnet_send(struct vnet *n, uint32_t len);
/* The next received frame (past its virtio header), its *len and *slot (give it back with
   vnet_recycle); NULL after max_ms (0: at once), or when the device broke: then n->broken
   is set and a "FAIL device needs reset" line printed. */
uint8_t *vnet_recv(struct vnet *n, uint32_t *len, unsigned int max_ms, uint32_t *slot);

#endif
