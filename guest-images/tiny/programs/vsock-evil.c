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
#include "tiny/vvsock.h"

#define NRX 8

static struct vsock v;

static void send_hdr(uint32_t sport, uint32_t dport, uint16_t op, uint32_t buf_alloc)
{
	struct vsock_hdr h = { .src_port = sport, .dst_port = dport, .op = op,
			       .buf_alloc = buf_alloc };

	vsock_send(&v, &h, 0, 0);
}

int main(const struct tiny_boot_info *bi)
{
	char mode[32] = "", val[32];
	unsigned long port = 5000;
	uint32_t id, len;

	cmdline_get(bi->cmdline, "mode", mode, sizeof(mode));
	if (!cmdline_get(bi->cmdline, "port", val, sizeof(val)))
		parse_ulong(val, &port);
	if (vsock_open(&v, bi->cmdline, NRX))
		return 1;

	if (!strcmp(mode, "norx") || !strcmp(mode, "hup")) {
		virtio_driver_ok(&v.dev);
		if (!strcmp(mode, "hup"))
			send_hdr(2000, (uint32_t)port, VSOCK_OP_REQUEST, 65536);
	} else if (!strcmp(mode, "noanswer")) {
		vsock_post_rx(&v, VSOCK_SLOT);
		virtio_driver_ok(&v.dev);
	} else if (!strcmp(mode, "zerocredit")) {
		vsock_post_rx(&v, VSOCK_SLOT);
		virtio_driver_ok(&v.dev);
		printf("vsock-evil zerocredit: ready\n");
		if (vq_wait(&v.rx, &id, &len, 30000))
			panic("no connection request came");
		struct vsock_hdr *h = vsock_rx_pkt(&v, id);
		if (h->op != VSOCK_OP_REQUEST)
			panic("expected a request, got op %u", h->op);
		send_hdr(h->dst_port, h->src_port, VSOCK_OP_RESPONSE, 0);
		halt_forever();
	} else if (!strcmp(mode, "shortrx")) {
		vsock_post_rx(&v, 8);
		virtio_driver_ok(&v.dev);
		printf("vsock-evil shortrx: ready\n");
		if (vq_wait(&v.rx, &id, &len, 30000))
			panic("the short buffer never came back");
		printf("vsock-evil shortrx: len %u isr %x\n", len,
		       vreg_read(&v.dev, VIRTIO_MMIO_INT_STATUS));
		return 0;
	} else {
		printf("FAIL unknown mode '%s'\n", mode);
		return 1;
	}
	printf("vsock-evil %s: ready\n", mode);
	halt_forever();
}
