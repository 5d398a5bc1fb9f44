/*
 * virtio-net: raw Ethernet frames (ethertype 0x88b5, local experimental) through the TAP.
 * Broadcasts "kvmvm-hello" (again every ~0.5 s until the first ping), then answers each
 * frame whose payload starts with "ping" with "pong" + the rest, sent back to its source.
 *   net: mac 52:54:00:12:34:56
 *   net: pong <n>
 *   virtio-net: ok
 * Arguments: count=N pings to answer (default 3); badhdr: every frame goes out with a
 * virtio_net_hdr full of offload requests nobody negotiated (GSO type 0x55, NEEDS_CSUM at
 * a bogus offset), which the device must not pass on to the host. syn: the hello is an
 * IPv4 TCP SYN (10.0.2.15:40000 -> 10.0.2.2:80), as a guest opening a connection through
 * passt sends it, and again every ~0.5 s like a retransmission.
 */
#include "tiny.h"
#include "tiny/vnet.h"

#define NRX 16
#define ETHERTYPE 0x88b5

static struct vnet n;
static int badhdr;

static int send_frame(const uint8_t *dst, const char *payload, uint32_t plen);

static int send_syn(const uint8_t *dst)
{
	static const uint8_t ip_tcp[40] = {
		0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 2, 15, 10, 0, 2, 2,
		0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 5 << 4, 0x02, 0xff, 0xff, 0, 0, 0, 0 };
	uint8_t *f = n.txbuf + VNET_HDR;

	memset(n.txbuf, 0, VNET_HDR + 64);
	memcpy(f, dst, 6);
	memcpy(f + 6, n.mac, 6);
	f[12] = 0x08;
	f[13] = 0x00;
	memcpy(f + 14, ip_tcp, sizeof(ip_tcp));
	return vnet_send(&n, 14 + sizeof(ip_tcp));
}

static int send_frame(const uint8_t *dst, const char *payload, uint32_t plen)
{
	uint8_t *f = n.txbuf + VNET_HDR;

	memset(n.txbuf, 0, VNET_HDR + 14 + 64);
	if (badhdr) {	/* flags, gso_type, hdr_len, gso_size, csum_start, csum_offset */
		static const uint8_t evil[VNET_HDR] = { 0xff, 0x55, 0xff, 0xff, 0x10, 0x00,
							0xf0, 0xff, 0xf0, 0xff, 0x01, 0x00 };
		memcpy(n.txbuf, evil, VNET_HDR);
	}
	memcpy(f, dst, 6);
	memcpy(f + 6, n.mac, 6);
	f[12] = ETHERTYPE >> 8;
	f[13] = ETHERTYPE & 0xff;
	memcpy(f + 14, payload, plen);
	return vnet_send(&n, 14 + plen);
}

int main(const struct tiny_boot_info *bi)
{
	static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	char val[32], reply[128];
	unsigned long count = 3;
	unsigned long pongs = 0;
	uint32_t len, slot;
	uint64_t end, next_hello = 0;
	uint8_t *f, *mac = n.mac;

	int syn = cmdline_has(bi->cmdline, "syn");

	badhdr = cmdline_has(bi->cmdline, "badhdr");
	if (!cmdline_get(bi->cmdline, "count", val, sizeof(val)))
		parse_ulong(val, &count);
	if (vnet_open(&n, bi->cmdline, NRX, 16))
		return 1;
	virtio_driver_ok(&n.dev);
	vnet_post_rx(&n);
	printf("net: mac %02x:%02x:%02x:%02x:%02x:%02x\n", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
	end = rdtsc() + tiny_ms_to_tsc(20000);
	while (pongs < count) {
		if (!pongs && rdtsc() > next_hello) {
			if (syn)
				send_syn(bcast);
			else
				send_frame(bcast, "kvmvm-hello", 11);
			next_hello = rdtsc() + tiny_ms_to_tsc(500);
		}
		if (!(f = vnet_recv(&n, &len, 0, &slot))) {
			if (n.broken)
				return 1;
			if (rdtsc() > end) {
				printf("FAIL timeout after %lu pongs\n", pongs);
				return 1;
			}
			continue;
		}
		uint32_t flen = len;

		if (flen >= 18 && f[12] == (ETHERTYPE >> 8) && f[13] == (ETHERTYPE & 0xff) &&
		    !memcmp(f + 14, "ping", 4)) {
			uint32_t pl = flen - 14;

			if (pl > 100)
				pl = 100;
			memcpy(reply, f + 14, pl);
			memcpy(reply, "pong", 4);
			while (pl > 4 && reply[pl - 1] == 0)
				pl--;
			reply[pl] = 0;
			send_frame(f + 6, reply, pl);
			printf("net: %s\n", reply);
			pongs++;
		}
		vnet_recycle(&n, slot);
	}
	printf("virtio-net: ok\n");
	return 0;
}
