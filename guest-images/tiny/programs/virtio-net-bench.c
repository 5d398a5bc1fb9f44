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
#include "tiny/vnet.h"

#define QSIZE 128
#define ETHERTYPE 0x88b5

static struct vnet n;
static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

static void frame_init(uint8_t *slot, uint32_t size, const char *tag, uint32_t tlen)
{
	uint8_t *f = slot + VNET_HDR;

	memset(slot, 0, VNET_HDR + size);
	memcpy(f, bcast, 6);
	memcpy(f + 6, n.mac, 6);
	f[12] = ETHERTYPE >> 8;
	f[13] = ETHERTYPE & 0xff;
	memcpy(f + 14, tag, tlen);
}

static int broken(void)
{
	if (virtio_status(&n.dev) & VIRTIO_S_NEEDS_RESET) {
		printf("FAIL device needs reset\n");
		return 1;
	}
	return 0;
}

static int bench_tx(unsigned long count, unsigned long size, uint64_t end)
{
	uint16_t freel[QSIZE];
	unsigned long sent = 0, done = 0;
	unsigned int nfree = n.tx.size, spins = 0;
	uint32_t id, len;
	uint64_t t0;

	for (unsigned int i = 0; i < n.tx.size; i++) {
		frame_init(n.txbuf + i * VNET_BUF, size, "bench", 5);
		freel[i] = i;
	}
	t0 = rdtsc();
	while (done < count) {
		if (nfree && sent < count) {
			while (nfree && sent < count) {
				uint16_t s = freel[--nfree];
				uint8_t *p = n.txbuf + s * VNET_BUF + VNET_HDR + 14 + 5;
				struct vbuf b = { (uint64_t)n.txbuf + s * VNET_BUF, VNET_HDR + size, 0 };

				p[0] = sent >> 24; p[1] = sent >> 16; p[2] = sent >> 8; p[3] = sent;
				vq_add_at(&n.tx, s, &b);
				sent++;
			}
			vq_kick(&n.tx);
		}
		if (vq_poll(&n.tx, &id, &len)) {
			freel[nfree++] = id % n.tx.size;
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
	struct vbuf b = { (uint64_t)n.txbuf, VNET_HDR + 60, 0 };
	uint32_t id, len;

	frame_init(n.txbuf, 60, "kvmvm-hello", 11);
	vq_add_at(&n.tx, 0, &b);
	vq_kick(&n.tx);
	return vq_wait(&n.tx, &id, &len, 5000);
}

static int bench_rx(unsigned long count, uint64_t end)
{
	unsigned long got = 0, size = 0;
	uint64_t t0 = 0, t1 = 0, next_hello = 0;
	unsigned int spins = 0;
	uint32_t id, len;

	vnet_post_rx(&n);
	while (got < count) {
		int drained = 0;

		if (!got && rdtsc() > next_hello) {
			if (send_hello()) {
				printf("FAIL hello not sent\n");
				return 3;
			}
			next_hello = rdtsc() + tiny_ms_to_tsc(500);
		}
		while (vq_poll(&n.rx, &id, &len)) {
			uint16_t s = id % n.rx.size;
			uint8_t *f = n.rxbuf + s * VNET_BUF + VNET_HDR;
			uint32_t flen = len > VNET_HDR ? len - VNET_HDR : 0;
			struct vbuf b = { (uint64_t)n.rxbuf + s * VNET_BUF, VNET_BUF, 1 };

			if (flen >= 19 && f[12] == (ETHERTYPE >> 8) && f[13] == (ETHERTYPE & 0xff) &&
			    !memcmp(f + 14, "bench", 5) && got < count) {
				t1 = rdtsc();
				if (!got++) {
					t0 = t1;
					size = flen;
				}
			}
			vq_add_at(&n.rx, s, &b);
			drained++;
		}
		if (drained) {
			vq_kick(&n.rx);
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
	if (vnet_open(&n, bi->cmdline, QSIZE, QSIZE))
		return 1;
	virtio_driver_ok(&n.dev);
	printf("net-bench: %s count=%lu size=%lu queue=%u/%u\n", rxmode ? "rx" : "tx", count, size,
	       n.rx.size, n.tx.size);
	if (rxmode)
		return bench_rx(count, rdtsc() + tiny_ms_to_tsc(ms));
	return bench_tx(count, size, rdtsc() + tiny_ms_to_tsc(ms));
}
