/*
 * vsock-late: a guest whose first vsock connect gave up before the host answered, as a
 * Linux guest's connect() does after 2 s of guest time on a loaded host. It connects to
 * the host's port P (default 1024, the agent's), answers the RESPONSE of that first
 * attempt with RST (what Linux sends for a socket that is gone), connects again from
 * another port, and there speaks the start of the agent protocol: its HELLO, then an
 * {"op":"ok"} reply to the host's ping, then waits for the host to close.
 *   vsock-late: first attempt reset
 *   vsock-late: hello sent
 *   vsock-late: ping answered
 *   vsock-late: ok
 */
#include "tiny.h"
#include "tiny/vvsock.h"

#define NRX 16
#define PORT_A 3000		/* the attempt the guest gave up on */
#define PORT_B 3001
#define BUF_ALLOC (64 * 1024)

static struct vsock v;
static uint32_t fwd;

static int send_pkt(uint32_t sport, uint32_t dport, uint16_t op, const void *data, uint32_t len)
{
	struct vsock_hdr h = { .src_port = sport, .dst_port = dport, .op = op,
			       .buf_alloc = BUF_ALLOC, .fwd_cnt = fwd };

	return vsock_send(&v, &h, data, len);
}

/* one agent-protocol frame: stream, type, channel 0, the JSON payload */
static void send_frame(uint32_t dport, uint32_t stream, uint8_t type, const char *json)
{
	static uint8_t f[256];
	uint32_t n = strlen(json);

	f[0] = stream >> 24, f[1] = stream >> 16, f[2] = stream >> 8, f[3] = stream;
	f[4] = type, f[5] = f[6] = f[7] = 0;
	f[8] = n >> 24, f[9] = n >> 16, f[10] = n >> 8, f[11] = n;
	memcpy(f + 12, json, n);
	send_pkt(PORT_B, dport, VSOCK_OP_RW, f, 12 + n);
}

static int has(const char *hay, uint32_t n, const char *needle)
{
	uint32_t k = strlen(needle);

	for (uint32_t i = 0; i + k <= n; i++)
		if (!memcmp(hay + i, needle, k))
			return 1;
	return 0;
}

int main(const struct tiny_boot_info *bi)
{
	static char got[4096];
	char val[32];
	unsigned long port = 1024;
	int state = 0;		/* 0 first attempt, 1 second, 2 open, 3 pinged, 4 closed */
	uint32_t got_len = 0, id, len;
	uint64_t end;

	if (!cmdline_get(bi->cmdline, "port", val, sizeof(val)))
		parse_ulong(val, &port);
	if (vsock_open(&v, bi->cmdline, NRX))
		return 1;
	vsock_post_rx(&v, VSOCK_SLOT);
	virtio_driver_ok(&v.dev);
	send_pkt(PORT_A, port, VSOCK_OP_REQUEST, 0, 0);
	end = rdtsc() + tiny_ms_to_tsc(20000);
	while (state != 4) {
		if (!vq_poll(&v.rx, &id, &len)) {
			if (rdtsc() > end) {
				printf("FAIL timeout (state %d)\n", state);
				return 1;
			}
			cpu_relax();
			continue;
		}
		struct vsock_hdr *h = vsock_rx_pkt(&v, id);
		const char *data = (const char *)(h + 1);
		uint32_t dl = h->len <= VSOCK_SLOT - sizeof(*h) ? h->len : 0;

		if (h->src_port != port) {
			vsock_recycle(&v, id);
			continue;
		}
		if (h->dst_port == PORT_A) {
			if (h->op == VSOCK_OP_RESPONSE && state == 0) {
				/* the connect gave up already: reset, then try again */
				send_pkt(PORT_A, port, VSOCK_OP_RST, 0, 0);
				printf("vsock-late: first attempt reset\n");
				state = 1;
				send_pkt(PORT_B, port, VSOCK_OP_REQUEST, 0, 0);
			}
		} else if (h->dst_port == PORT_B) {
			if (h->op == VSOCK_OP_RESPONSE && state == 1) {
				state = 2;
				send_frame(port, 0, 1, "{\"version\":1,\"agent\":\"vsock-late\",\"window\":262144,"
					   "\"max_frame\":262144,\"capabilities\":[]}");
				printf("vsock-late: hello sent\n");
			} else if (h->op == VSOCK_OP_RW && state >= 2) {
				fwd += dl;
				for (uint32_t i = 0; i < dl && got_len < sizeof(got); i++)
					got[got_len++] = data[i];
				if (state == 2 && has(got, got_len, "\"ping\"")) {
					send_frame(port, 0, 2, "{\"op\":\"ok\"}");
					printf("vsock-late: ping answered\n");
					state = 3;
				}
			} else if (h->op == VSOCK_OP_SHUTDOWN || h->op == VSOCK_OP_RST) {
				if (state != 3) {
					printf("FAIL the host closed the stream in state %d\n", state);
					return 1;
				}
				if (h->op == VSOCK_OP_SHUTDOWN)
					send_pkt(PORT_B, port, VSOCK_OP_RST, 0, 0);
				state = 4;
			}
		}
		vsock_recycle(&v, id);
	}
	printf("vsock-late: ok\n");
	return 0;
}
