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
#include "tiny/vvsock.h"

#define NRX 32
#define GUEST_PORT 2000
#define BUF_ALLOC (64 * 1024)

static struct vsock v;
static uint32_t fwd_a, fwd_b;

static int send_pkt(uint32_t sport, uint32_t dport, uint16_t op, uint32_t flags,
		    const void *data, uint32_t len, uint32_t fwd)
{
	struct vsock_hdr h = { .src_port = sport, .dst_port = dport, .op = op, .flags = flags,
			       .buf_alloc = BUF_ALLOC, .fwd_cnt = fwd };

	return vsock_send(&v, &h, data, len);
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
	if (vsock_open(&v, bi->cmdline, NRX))
		return 1;
	vsock_post_rx(&v, VSOCK_SLOT);
	virtio_driver_ok(&v.dev);
	printf("vsock: cid %lu\n", (unsigned long)v.cid);
	if (a_state == 0)
		send_pkt(GUEST_PORT, port, VSOCK_OP_REQUEST, 0, 0, 0, 0);
	end = rdtsc() + tiny_ms_to_tsc(20000);
	while (a_state != 3 || b_state != 3) {
		if (!vq_poll(&v.rx, &id, &len)) {
			if (virtio_status(&v.dev) & VIRTIO_S_NEEDS_RESET) {
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
		struct vsock_hdr *h = vsock_rx_pkt(&v, id);
		uint8_t *data = (uint8_t *)(h + 1);
		uint32_t dl = h->len <= VSOCK_SLOT - sizeof(*h) ? h->len : 0;

		if (h->dst_port == GUEST_PORT && h->src_port == port) {
			if (h->op == VSOCK_OP_RESPONSE && a_state == 0) {
				a_state = 1;
				send_pkt(GUEST_PORT, port, VSOCK_OP_RW, 0, msg, sizeof(msg) - 1, fwd_a);
			} else if (h->op == VSOCK_OP_RW && a_state == 1) {
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
					send_pkt(GUEST_PORT, port, VSOCK_OP_SHUTDOWN, 3, 0, 0, fwd_a);
				}
			} else if (h->op == VSOCK_OP_RST) {
				if (a_state < 2) {
					printf("FAIL guest->host stream reset (state %d)\n", a_state);
					return 1;
				}
				a_state = 3;
			}
		} else if (h->dst_port == listen) {
			if (h->op == VSOCK_OP_REQUEST && b_state == 0) {
				b_peer = h->src_port;
				b_state = 1;
				printf("vsock: host connected (host port %u)\n", b_peer);
				send_pkt(listen, b_peer, VSOCK_OP_RESPONSE, 0, 0, 0, 0);
			} else if (h->src_port == b_peer && b_state == 1) {
				if (h->op == VSOCK_OP_RW) {
					fwd_b += dl;
					b_bytes += dl;
					send_pkt(listen, b_peer, VSOCK_OP_RW, 0, data, dl, fwd_b);
				} else if (h->op == VSOCK_OP_SHUTDOWN || h->op == VSOCK_OP_RST) {
					if (h->op == VSOCK_OP_SHUTDOWN)
						send_pkt(listen, b_peer, VSOCK_OP_RST, 0, 0, 0, fwd_b);
					printf("vsock: host->guest echoed %u bytes\n", b_bytes);
					b_state = 3;
				} else if (h->op == VSOCK_OP_CREDIT_REQUEST) {
					send_pkt(listen, b_peer, VSOCK_OP_CREDIT_UPDATE, 0, 0, 0, fwd_b);
				}
			}
		}
		vsock_recycle(&v, id);
	}
	printf("virtio-vsock: ok\n");
	return 0;
}
