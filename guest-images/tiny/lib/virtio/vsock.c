/* virtio-vsock for tiny guests: device setup, receive slots, one-packet send. */
#include "tiny.h"
#include "tiny/vvsock.h"

int vsock_open(struct vsock *v, const char *cmdline, uint16_t nrx)
{
	if (virtio_find(cmdline, VIRTIO_ID_VSOCK, 0, &v->dev) || virtio_init(&v->dev, 0) ||
	    vq_setup(&v->dev, &v->rx, 0, nrx) || vq_setup(&v->dev, &v->tx, 1, 16) ||
	    vq_setup(&v->dev, &v->ev, 2, 4)) {
		printf("FAIL no usable virtio-vsock device\n");
		return -1;
	}
	v->cid = mmio_read32(v->dev.base + VIRTIO_MMIO_CONFIG) |
		 ((uint64_t)mmio_read32(v->dev.base + VIRTIO_MMIO_CONFIG + 4) << 32);
	v->rxbuf = tiny_alloc((uint64_t)v->rx.size * VSOCK_SLOT, 4096);
	v->txbuf = tiny_alloc(VSOCK_SLOT, 4096);
	if (!v->rxbuf || !v->txbuf) {
		printf("FAIL out of memory\n");
		return -1;
	}
	return 0;
}

void vsock_post_rx(struct vsock *v, uint32_t size)
{
	for (uint16_t i = 0; i < v->rx.size; i++) {
		struct vbuf b = { (uint64_t)v->rxbuf + i * VSOCK_SLOT, size, 1 };

		vq_add_at(&v->rx, i, &b);
	}
}

struct vsock_hdr *vsock_rx_pkt(struct vsock *v, uint32_t id)
{
	return (struct vsock_hdr *)(v->rxbuf + (id % v->rx.size) * VSOCK_SLOT);
}

void vsock_recycle(struct vsock *v, uint32_t id)
{
	struct vbuf b = { (uint64_t)vsock_rx_pkt(v, id), VSOCK_SLOT, 1 };

	vq_add_at(&v->rx, (uint16_t)(id % v->rx.size), &b);
	vq_kick(&v->rx);
}

int vsock_send(struct vsock *v, const struct vsock_hdr *h, const void *data, uint32_t len)
{
	struct vsock_hdr *t = (struct vsock_hdr *)v->txbuf;
	struct vbuf b = { (uint64_t)v->txbuf, sizeof(*t) + len, 0 };
	uint32_t id, ulen;

	if (len > VSOCK_SLOT - sizeof(*t))
		return -1;
	*t = *h;
	t->src_cid = v->cid;
	t->dst_cid = VSOCK_HOST_CID;
	t->type = 1;	/* stream */
	t->len = len;
	if (len)
		memcpy(v->txbuf + sizeof(*t), data, len);
	vq_add(&v->tx, &b, 1);
	vq_kick(&v->tx);
	return vq_wait(&v->tx, &id, &ulen, 5000);
}
