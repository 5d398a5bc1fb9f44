/* virtio-net for tiny guests: device setup, receive slots, one-frame send and receive. */
#include "tiny.h"
#include "tiny/vnet.h"

int vnet_open(struct vnet *n, const char *cmdline, uint16_t nrx, uint16_t ntx)
{
	if (virtio_find(cmdline, VIRTIO_ID_NET, 0, &n->dev) ||
	    virtio_init(&n->dev, 1ull << VNET_F_MAC) || vq_setup(&n->dev, &n->rx, 0, nrx) ||
	    vq_setup(&n->dev, &n->tx, 1, ntx)) {
		printf("FAIL no usable virtio-net device\n");
		return -1;
	}
	for (int i = 0; i < 6; i++)
		n->mac[i] = mmio_read8(n->dev.base + VIRTIO_MMIO_CONFIG + i);
	n->rxbuf = tiny_alloc((uint64_t)n->rx.size * VNET_BUF, 4096);
	n->txbuf = tiny_alloc((uint64_t)n->tx.size * VNET_BUF, 4096);
	if (!n->rxbuf || !n->txbuf) {
		printf("FAIL out of memory\n");
		return -1;
	}
	return 0;
}

void vnet_recycle(struct vnet *n, uint32_t slot)
{
	struct vbuf b = { (uint64_t)n->rxbuf + slot * VNET_BUF, VNET_BUF, 1 };

	vq_add_at(&n->rx, (uint16_t)slot, &b);
	vq_kick(&n->rx);
}

void vnet_post_rx(struct vnet *n)
{
	for (uint16_t i = 0; i < n->rx.size; i++) {
		struct vbuf b = { (uint64_t)n->rxbuf + i * VNET_BUF, VNET_BUF, 1 };

		vq_add_at(&n->rx, i, &b);
	}
	vq_kick(&n->rx);
}

int vnet_send(struct vnet *n, uint32_t len)
{
	struct vbuf b = { (uint64_t)n->txbuf, VNET_HDR + (len < 60 ? 60 : len), 0 };
	uint32_t id, l;

	vq_add(&n->tx, &b, 1);
	vq_kick(&n->tx);
	return vq_wait(&n->tx, &id, &l, 5000);
}

uint8_t *vnet_recv(struct vnet *n, uint32_t *len, unsigned int max_ms, uint32_t *slot)
{
	uint64_t end = rdtsc() + tiny_ms_to_tsc(max_ms);
	uint32_t id, l;

	while (!vq_poll(&n->rx, &id, &l)) {
		if (virtio_status(&n->dev) & VIRTIO_S_NEEDS_RESET) {
			printf("FAIL device needs reset\n");
			n->broken = 1;
			return NULL;
		}
		cpu_relax();
		if (rdtsc() > end)
			return NULL;
	}
	*slot = id % n->rx.size;
	*len = l > VNET_HDR ? l - VNET_HDR : 0;
	return n->rxbuf + *slot * VNET_BUF + VNET_HDR;
}
