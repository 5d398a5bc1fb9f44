/*
 * virtio-net: raw Ethernet frames (ethertype 0x88b5, local experimental) through the TAP.
 * Broadcasts "kvmvm-hello" (again every ~0.5 s until the first ping), then answers each
 * frame whose payload starts with "ping" with "pong" + the rest, sent back to its source.
 *   net: mac 52:54:00:12:34:56
 *   net: pong <n>
 *   virtio-net: ok
 * Arguments: count=N pings to answer (default 3); badhdr: every frame goes out with a
 * virtio_net_hdr full of offload requests nobody negotiated (GSO type 0x55, NEEDS_CSUM at
 * a bogus offset), which the device must not pass on to the host.
 */
#include "tiny.h"
#include "tiny/virtio.h"

#define NRX 16
#define BUF 2048
#define HDR 12
#define ETHERTYPE 0x88b5

static struct vdev d;
static struct vq rx, tx;
static uint8_t mac[6], *rxbuf, *txbuf;
static int badhdr;

static int send_frame(const uint8_t *dst, const char *payload, uint32_t plen)
{
	uint8_t *f = txbuf + HDR;
	struct vbuf b = { (uint64_t)txbuf, HDR + 14 + (plen < 46 ? 46 : plen), 0 };
	uint32_t id, len;

	memset(txbuf, 0, HDR + 14 + 64);
	if (badhdr) {	/* flags, gso_type, hdr_len, gso_size, csum_start, csum_offset */
		static const uint8_t evil[HDR] = { 0xff, 0x55, 0xff, 0xff, 0x10, 0x00,
						   0xf0, 0xff, 0xf0, 0xff, 0x01, 0x00 };
		memcpy(txbuf, evil, HDR);
	}
	memcpy(f, dst, 6);
	memcpy(f + 6, mac, 6);
	f[12] = ETHERTYPE >> 8;
	f[13] = ETHERTYPE & 0xff;
	memcpy(f + 14, payload, plen);
	vq_add(&tx, &b, 1);
	vq_kick(&tx);
	return vq_wait(&tx, &id, &len, 5000);
}

int main(const struct tiny_boot_info *bi)
{
	static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	char val[32], reply[128];
	unsigned long count = 3;
	unsigned long pongs = 0;
	uint32_t id, len;
	uint64_t end, next_hello = 0;

	badhdr = cmdline_has(bi->cmdline, "badhdr");
	if (!cmdline_get(bi->cmdline, "count", val, sizeof(val)))
		parse_ulong(val, &count);
	if (virtio_find(bi->cmdline, VIRTIO_ID_NET, 0, &d) || virtio_init(&d, 1ull << 5) ||
	    vq_setup(&d, &rx, 0, NRX) || vq_setup(&d, &tx, 1, 16)) {
		printf("FAIL no usable virtio-net device\n");
		return 1;
	}
	for (int i = 0; i < 6; i++)
		mac[i] = mmio_read8(d.base + VIRTIO_MMIO_CONFIG + i);
	rxbuf = tiny_alloc(NRX * BUF, 4096);
	txbuf = tiny_alloc(BUF, 4096);
	for (int i = 0; i < NRX; i++) {
		struct vbuf b = { (uint64_t)rxbuf + i * BUF, BUF, 1 };
		vq_add_at(&rx, i, &b);
	}
	virtio_driver_ok(&d);
	vq_kick(&rx);
	printf("net: mac %02x:%02x:%02x:%02x:%02x:%02x\n", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
	end = rdtsc() + tiny_ms_to_tsc(20000);
	while (pongs < count) {
		if (!pongs && rdtsc() > next_hello) {
			send_frame(bcast, "kvmvm-hello", 11);
			next_hello = rdtsc() + tiny_ms_to_tsc(500);
		}
		if (!vq_poll(&rx, &id, &len)) {
			if (virtio_status(&d) & VIRTIO_S_NEEDS_RESET) {
				printf("FAIL device needs reset\n");
				return 1;
			}
			if (rdtsc() > end) {
				printf("FAIL timeout after %lu pongs\n", pongs);
				return 1;
			}
			cpu_relax();
			continue;
		}
		uint8_t *f = rxbuf + (id % NRX) * BUF + HDR;
		uint32_t flen = len > HDR ? len - HDR : 0;

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
		struct vbuf b = { (uint64_t)rxbuf + (id % NRX) * BUF, BUF, 1 };
		vq_add_at(&rx, id % NRX, &b);
		vq_kick(&rx);
	}
	printf("virtio-net: ok\n");
	return 0;
}
