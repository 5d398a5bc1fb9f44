/*
 * virtio-vsock: one stream each way, both echoed.
 * - guest -> host: connect to host (CID 2) port=P (default 5000), send "hello-from-guest\n"
 *   and expect it echoed back, then close (SHUTDOWN, the host answers RST).
 * - host -> guest: accept a connection on listen=L (default 1234), echo every byte until
 *   the host closes.
 *   vsock: cid <n>
 *   vsock: guest->host echo ok
 *   vsock: host connected (host port <n>)
 *   vsock: host->guest echoed <bytes> bytes
 *   virtio-vsock: ok
 * Arguments: port=P listen=L skip-out (no guest->host stream) skip-in (no host->guest one)
 */
#include "tiny.h"
#include "tiny/virtio.h"

#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define NRX 32
#define RXBUF 4096
#define GUEST_PORT 2000
#define BUF_ALLOC (64 * 1024)

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
static uint32_t fwd_a, fwd_b;

static int send_pkt(uint32_t sport, uint32_t dport, uint16_t op, uint32_t flags,
		    const void *data, uint32_t len, uint32_t fwd)
{
	struct hdr *h = (struct hdr *)txbuf;
	struct vbuf b = { (uint64_t)txbuf, sizeof(*h) + len, 0 };
	uint32_t id, ulen;

	memset(h, 0, sizeof(*h));
	h->src_cid = cid;
	h->dst_cid = 2;
	h->src_port = sport;
	h->dst_port = dport;
	h->len = len;
	h->type = 1;
	h->op = op;
	h->flags = flags;
	h->buf_alloc = BUF_ALLOC;
	h->fwd_cnt = fwd;
	if (len)
		memcpy(txbuf + sizeof(*h), data, len);
	vq_add(&tx, &b, 1);
	vq_kick(&tx);
	return vq_wait(&tx, &id, &ulen, 5000);
}

int main(const struct tiny_boot_info *bi)
{
	static const char msg[] = "hello-from-guest\n";
	char val[32], got[64];
	unsigned long port = 5000, listen = 1234;
	int a_state = 0, b_state = 0, got_len = 0;	/* a: 0 connecting 1 open 2 closing 3 done */
	uint32_t b_peer = 0, b_bytes = 0, id, len;
	uint64_t end;

	if (!cmdline_get(bi->cmdline, "port", val, sizeof(val)))
		parse_ulong(val, &port);
	if (!cmdline_get(bi->cmdline, "listen", val, sizeof(val)))
		parse_ulong(val, &listen);
	if (cmdline_has(bi->cmdline, "skip-out"))
		a_state = 3;
	if (cmdline_has(bi->cmdline, "skip-in"))
		b_state = 3;
	if (virtio_find(bi->cmdline, VIRTIO_ID_VSOCK, 0, &d) || virtio_init(&d, 0) ||
	    vq_setup(&d, &rx, 0, NRX) || vq_setup(&d, &tx, 1, 16) || vq_setup(&d, &ev, 2, 4)) {
		printf("FAIL no usable virtio-vsock device\n");
		return 1;
	}
	cid = mmio_read32(d.base + VIRTIO_MMIO_CONFIG) |
	      ((uint64_t)mmio_read32(d.base + VIRTIO_MMIO_CONFIG + 4) << 32);
	rxbuf = tiny_alloc(NRX * RXBUF, 4096);
	txbuf = tiny_alloc(RXBUF, 4096);
	for (int i = 0; i < NRX; i++) {
		struct vbuf b = { (uint64_t)rxbuf + i * RXBUF, RXBUF, 1 };
		vq_add_at(&rx, i, &b);
	}
	virtio_driver_ok(&d);
	printf("vsock: cid %lu\n", (unsigned long)cid);
	if (a_state == 0)
		send_pkt(GUEST_PORT, port, OP_REQUEST, 0, 0, 0, 0);
	end = rdtsc() + tiny_ms_to_tsc(20000);
	while (a_state != 3 || b_state != 3) {
		if (!vq_poll(&rx, &id, &len)) {
			if (virtio_status(&d) & VIRTIO_S_NEEDS_RESET) {
				printf("FAIL device needs reset\n");
				return 1;
			}
			if (rdtsc() > end) {
				printf("FAIL timeout (a=%d b=%d)\n", a_state, b_state);
				return 1;
			}
			cpu_relax();
			continue;
		}
		struct hdr *h = (struct hdr *)(rxbuf + (id % NRX) * RXBUF);
		uint8_t *data = (uint8_t *)(h + 1);
		uint32_t dl = h->len <= RXBUF - sizeof(*h) ? h->len : 0;

		if (h->dst_port == GUEST_PORT && h->src_port == port) {
			if (h->op == OP_RESPONSE && a_state == 0) {
				a_state = 1;
				send_pkt(GUEST_PORT, port, OP_RW, 0, msg, sizeof(msg) - 1, fwd_a);
			} else if (h->op == OP_RW && a_state == 1) {
				fwd_a += dl;
				for (uint32_t i = 0; i < dl && got_len < 63; i++)
					got[got_len++] = data[i];
				got[got_len] = 0;
				if (got_len >= (int)sizeof(msg) - 1) {
					if (strcmp(got, msg)) {
						printf("FAIL echo mismatch '%s'\n", got);
						return 1;
					}
					printf("vsock: guest->host echo ok\n");
					a_state = 2;
					send_pkt(GUEST_PORT, port, OP_SHUTDOWN, 3, 0, 0, fwd_a);
				}
			} else if (h->op == OP_RST) {
				if (a_state < 2) {
					printf("FAIL guest->host stream reset (state %d)\n", a_state);
					return 1;
				}
				a_state = 3;
			}
		} else if (h->dst_port == listen) {
			if (h->op == OP_REQUEST && b_state == 0) {
				b_peer = h->src_port;
				b_state = 1;
				printf("vsock: host connected (host port %u)\n", b_peer);
				send_pkt(listen, b_peer, OP_RESPONSE, 0, 0, 0, 0);
			} else if (h->src_port == b_peer && b_state == 1) {
				if (h->op == OP_RW) {
					fwd_b += dl;
					b_bytes += dl;
					send_pkt(listen, b_peer, OP_RW, 0, data, dl, fwd_b);
				} else if (h->op == OP_SHUTDOWN || h->op == OP_RST) {
					if (h->op == OP_SHUTDOWN)
						send_pkt(listen, b_peer, OP_RST, 0, 0, 0, fwd_b);
					printf("vsock: host->guest echoed %u bytes\n", b_bytes);
					b_state = 3;
				} else if (h->op == OP_CREDIT_REQUEST) {
					send_pkt(listen, b_peer, OP_CREDIT_UPDATE, 0, 0, 0, fwd_b);
				}
			}
		}
		struct vbuf b = { (uint64_t)h, RXBUF, 1 };
		vq_add_at(&rx, id % NRX, &b);
		vq_kick(&rx);
	}
	printf("virtio-vsock: ok\n");
	return 0;
}
