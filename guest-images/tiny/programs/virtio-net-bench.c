/*
 * virtio-net-bench: a bounded burst of raw Ethernet frames (ethertype 0x88b5) through
 * virtio-net, polled, timed with the TSC. Frame size S counts the Ethernet header (14 bytes)
 * but not the 12-byte virtio_net_hdr; 60 <= S <= 1514.
 *
 * tx (default): sends count=N broadcast frames of size=S, keeping the transmit ring full
 *   (one kick per refill), then prints
 *     net-bench: sent <N> frames <S> bytes <tsc ticks>
 *   ticks: from the first frame posted to the last one completed by the device.
 * rx: posts receive buffers, broadcasts "kvmvm-hello" (again every ~0.5 s until the first
 *   bench frame) and counts count=N frames of ethertype 0x88b5 whose payload starts with
 *   "bench"; reposts the buffers it drained and kicks once per drain. Prints
 *     net-bench: received <N> frames <S> bytes <tsc ticks>
 *   ticks: from the first bench frame to the Nth (N-1 intervals); S = the first frame's size.
 * ms=M gives up after M ms (default 30000): "FAIL timeout after <n> frames", status 3.
 */
#include "tiny.h"
#include "tiny/virtio.h"

#define QSIZE 128
#define BUF 2048
#define HDR 12
#define ETHERTYPE 0x88b5

static struct vdev d;
static struct vq rx, tx;
static uint8_t mac[6], *rxbuf, *txbuf;
static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

static void frame_init(uint8_t *slot, uint32_t size, const char *tag, uint32_t tlen)
{
	uint8_t *f = slot + HDR;

	memset(slot, 0, HDR + size);
	memcpy(f, bcast, 6);
	memcpy(f + 6, mac, 6);
	f[12] = ETHERTYPE >> 8;
	f[13] = ETHERTYPE & 0xff;
	memcpy(f + 14, tag, tlen);
}

static int broken(void)
{
	if (virtio_status(&d) & VIRTIO_S_NEEDS_RESET) {
		printf("FAIL device needs reset\n");
		return 1;
	}
	return 0;
}

static int bench_tx(unsigned long count, unsigned long size, uint64_t end)
{
	uint16_t freel[QSIZE];
	unsigned long sent = 0, done = 0;
	unsigned int nfree = tx.size, spins = 0;
	uint32_t id, len;
	uint64_t t0;

	for (unsigned int i = 0; i < tx.size; i++) {
		frame_init(txbuf + i * BUF, size, "bench", 5);
		freel[i] = i;
	}
	t0 = rdtsc();
	while (done < count) {
		if (nfree && sent < count) {
			while (nfree && sent < count) {
				uint16_t s = freel[--nfree];
				uint8_t *p = txbuf + s * BUF + HDR + 14 + 5;
				struct vbuf b = { (uint64_t)txbuf + s * BUF, HDR + size, 0 };

				p[0] = sent >> 24; p[1] = sent >> 16; p[2] = sent >> 8; p[3] = sent;
				vq_add_at(&tx, s, &b);
				sent++;
			}
			vq_kick(&tx);
		}
		if (vq_poll(&tx, &id, &len)) {
			freel[nfree++] = id % tx.size;
			done++;
			continue;
		}
		if ((++spins & 1023) == 0 && (broken() || rdtsc() > end)) {
			printf("FAIL timeout after %lu frames\n", done);
			return 3;
		}
		cpu_relax();
	}
	printf("net-bench: sent %lu frames %lu bytes %lu\n", count, size,
	       (unsigned long)(rdtsc() - t0));
	return 0;
}

static int send_hello(void)
{
	struct vbuf b = { (uint64_t)txbuf, HDR + 60, 0 };
	uint32_t id, len;

	frame_init(txbuf, 60, "kvmvm-hello", 11);
	vq_add_at(&tx, 0, &b);
	vq_kick(&tx);
	return vq_wait(&tx, &id, &len, 5000);
}

static int bench_rx(unsigned long count, uint64_t end)
{
	unsigned long got = 0, size = 0;
	uint64_t t0 = 0, t1 = 0, next_hello = 0;
	unsigned int spins = 0;
	uint32_t id, len;

	for (unsigned int i = 0; i < rx.size; i++) {
		struct vbuf b = { (uint64_t)rxbuf + i * BUF, BUF, 1 };
		vq_add_at(&rx, i, &b);
	}
	vq_kick(&rx);
	while (got < count) {
		int n = 0;

		if (!got && rdtsc() > next_hello) {
			if (send_hello()) {
				printf("FAIL hello not sent\n");
				return 3;
			}
			next_hello = rdtsc() + tiny_ms_to_tsc(500);
		}
		while (vq_poll(&rx, &id, &len)) {
			uint16_t s = id % rx.size;
			uint8_t *f = rxbuf + s * BUF + HDR;
			uint32_t flen = len > HDR ? len - HDR : 0;
			struct vbuf b = { (uint64_t)rxbuf + s * BUF, BUF, 1 };

			if (flen >= 19 && f[12] == (ETHERTYPE >> 8) && f[13] == (ETHERTYPE & 0xff) &&
			    !memcmp(f + 14, "bench", 5) && got < count) {
				t1 = rdtsc();
				if (!got++) {
					t0 = t1;
					size = flen;
				}
			}
			vq_add_at(&rx, s, &b);
			n++;
		}
		if (n) {
			vq_kick(&rx);
			continue;
		}
		if ((++spins & 1023) == 0 && (broken() || rdtsc() > end)) {
			printf("FAIL timeout after %lu frames\n", got);
			return 3;
		}
		cpu_relax();
	}
	printf("net-bench: received %lu frames %lu bytes %lu\n", count, size,
	       (unsigned long)(t1 - t0));
	return 0;
}

int main(const struct tiny_boot_info *bi)
{
	char val[32];
	unsigned long count = 1000, size = 1514, ms = 30000;
	int rxmode = cmdline_has(bi->cmdline, "rx");

	if (!cmdline_get(bi->cmdline, "count", val, sizeof(val)))
		parse_ulong(val, &count);
	if (!cmdline_get(bi->cmdline, "size", val, sizeof(val)))
		parse_ulong(val, &size);
	if (!cmdline_get(bi->cmdline, "ms", val, sizeof(val)))
		parse_ulong(val, &ms);
	if (size < 60)
		size = 60;
	if (size > 1514)
		size = 1514;
	if (!count)
		count = 1;
	if (virtio_find(bi->cmdline, VIRTIO_ID_NET, 0, &d) || virtio_init(&d, 1ull << 5) ||
	    vq_setup(&d, &rx, 0, QSIZE) || vq_setup(&d, &tx, 1, QSIZE)) {
		printf("FAIL no usable virtio-net device\n");
		return 1;
	}
	for (int i = 0; i < 6; i++)
		mac[i] = mmio_read8(d.base + VIRTIO_MMIO_CONFIG + i);
	rxbuf = tiny_alloc(rx.size * BUF, 4096);
	txbuf = tiny_alloc(tx.size * BUF, 4096);
	if (!rxbuf || !txbuf) {
		printf("FAIL out of memory\n");
		return 1;
	}
	virtio_driver_ok(&d);
	printf("net-bench: %s count=%lu size=%lu queue=%u/%u\n", rxmode ? "rx" : "tx", count, size,
	       rx.size, tx.size);
	if (rxmode)
		return bench_rx(count, rdtsc() + tiny_ms_to_tsc(ms));
	return bench_tx(count, size, rdtsc() + tiny_ms_to_tsc(ms));
}
