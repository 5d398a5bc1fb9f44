/*
 * vsock-evil: virtio-vsock drivers that leave the device's host side hanging. mode=<m>:
 *   norx        never posts a receive buffer (a host connection cannot even be announced)
 *   noanswer    posts receive buffers but never answers a host's connection request
 *   zerocredit  accepts a host connection advertising buf_alloc 0, then never reads
 *   hup         connects to the host (port=P, default 5000) with no receive buffers posted
 *   shortrx     posts receive buffers shorter than a packet header; reports what came back
 * All but shortrx print "vsock-evil <m>: ready" and then halt with interrupts off (the
 * vCPU never runs again); the host side decides when the VM ends. shortrx prints
 * "vsock-evil shortrx: len <n> isr <x>" and ends.
 */
#include "tiny.h"
#include "tiny/virtio.h"

#define OP_REQUEST 1
#define OP_RESPONSE 2
#define NRX 8

struct hdr {
	uint64_t src_cid, dst_cid;
	uint32_t src_port, dst_port, len;
	uint16_t type, op;
	uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

static struct vdev d;
static struct vq rx, tx, ev;
static uint64_t cid;
static uint8_t *rxbuf, *txbuf;

static void send_hdr(uint32_t sport, uint32_t dport, uint16_t op, uint32_t buf_alloc)
{
	struct hdr *h = (struct hdr *)txbuf;
	struct vbuf b = { (uint64_t)txbuf, sizeof(*h), 0 };
	uint32_t id, len;

	memset(h, 0, sizeof(*h));
	h->src_cid = cid;
	h->dst_cid = 2;
	h->src_port = sport;
	h->dst_port = dport;
	h->type = 1;
	h->op = op;
	h->buf_alloc = buf_alloc;
	vq_add(&tx, &b, 1);
	vq_kick(&tx);
	vq_wait(&tx, &id, &len, 5000);
}

static void post_rx(uint32_t size)
{
	for (int i = 0; i < NRX; i++) {
		struct vbuf b = { (uint64_t)rxbuf + i * 4096, size, 1 };

		vq_add_at(&rx, i, &b);
	}
}

int main(const struct tiny_boot_info *bi)
{
	char mode[32] = "", val[32];
	unsigned long port = 5000;
	uint32_t id, len;

	cmdline_get(bi->cmdline, "mode", mode, sizeof(mode));
	if (!cmdline_get(bi->cmdline, "port", val, sizeof(val)))
		parse_ulong(val, &port);
	if (virtio_find(bi->cmdline, VIRTIO_ID_VSOCK, 0, &d) || virtio_init(&d, 0) ||
	    vq_setup(&d, &rx, 0, NRX) || vq_setup(&d, &tx, 1, 16) || vq_setup(&d, &ev, 2, 4)) {
		printf("FAIL no usable virtio-vsock device\n");
		return 1;
	}
	cid = mmio_read32(d.base + VIRTIO_MMIO_CONFIG) |
	      ((uint64_t)mmio_read32(d.base + VIRTIO_MMIO_CONFIG + 4) << 32);
	rxbuf = tiny_alloc(NRX * 4096, 4096);
	txbuf = tiny_alloc(4096, 4096);

	if (!strcmp(mode, "norx") || !strcmp(mode, "hup")) {
		virtio_driver_ok(&d);
		if (!strcmp(mode, "hup"))
			send_hdr(2000, (uint32_t)port, OP_REQUEST, 65536);
	} else if (!strcmp(mode, "noanswer")) {
		post_rx(4096);
		virtio_driver_ok(&d);
	} else if (!strcmp(mode, "zerocredit")) {
		post_rx(4096);
		virtio_driver_ok(&d);
		printf("vsock-evil zerocredit: ready\n");
		if (vq_wait(&rx, &id, &len, 30000))
			panic("no connection request came");
		struct hdr *h = (struct hdr *)(rxbuf + (id % NRX) * 4096);
		if (h->op != OP_REQUEST)
			panic("expected a request, got op %u", h->op);
		send_hdr(h->dst_port, h->src_port, OP_RESPONSE, 0);
		halt_forever();
	} else if (!strcmp(mode, "shortrx")) {
		post_rx(8);
		virtio_driver_ok(&d);
		printf("vsock-evil shortrx: ready\n");
		if (vq_wait(&rx, &id, &len, 30000))
			panic("the short buffer never came back");
		printf("vsock-evil shortrx: len %u isr %x\n", len,
		       vreg_read(&d, VIRTIO_MMIO_INT_STATUS));
		return 0;
	} else {
		printf("FAIL unknown mode '%s'\n", mode);
		return 1;
	}
	printf("vsock-evil %s: ready\n", mode);
	halt_forever();
}
