/*
 * virtio-net-passt: talks to passt (kvmvm --net user) the way a guest's network stack would.
 *   1. DHCP DISCOVER, broadcast -> passt's OFFER: our address and the router
 *   2. ARP who-has router       -> passt's reply: the router's MAC
 *   3. UDP to router:port, count datagrams of growing size -> each echoed back by a server
 *      on the host's loopback (passt maps the gateway address to the host)
 *   passt: dhcp offer 10.0.2.15 router 10.0.2.2
 *   passt: arp 10.0.2.2 is at 9a:55:...
 *   passt: udp echo 0 (18 bytes)
 *   virtio-net-passt: ok
 * Arguments: port=N (the echo server's UDP port, default 7), count=N (default 3),
 *   burst=N: first send N 1200-byte datagrams to router:9 (discard) back to back, each
 *   numbered, so a host that stops reading makes the device's backend congested
 */
#include "tiny.h"
#include "tiny/vnet.h"

#define NRX 16
#define ETH_IP 0x0800
#define ETH_ARP 0x0806
#define SPORT 40000
#define XID 0x6b766d76u          /* "kvmv" */

static struct vnet n;
static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

static void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint16_t ip_csum(const uint8_t *p, int len)
{
	uint32_t s = 0;
	for (int i = 0; i < len; i += 2)
		s += (uint32_t)(p[i] << 8 | p[i + 1]);
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)~s;
}

/* Ethernet + IPv4 + UDP headers in n.txbuf; returns a pointer to the UDP payload */
static uint8_t *udp_frame(const uint8_t *dmac, const uint8_t *sip, const uint8_t *dip,
			  uint16_t sport, uint16_t dport, uint32_t plen)
{
	uint8_t *f = n.txbuf + VNET_HDR, *ip = f + 14, *udp = ip + 20;

	memset(n.txbuf, 0, VNET_HDR + 14 + 28);
	memcpy(f, dmac, 6);
	memcpy(f + 6, n.mac, 6);
	put16(f + 12, ETH_IP);
	ip[0] = 0x45;
	put16(ip + 2, (uint16_t)(28 + plen));
	ip[8] = 64;
	ip[9] = 17;
	memcpy(ip + 12, sip, 4);
	memcpy(ip + 16, dip, 4);
	put16(ip + 10, ip_csum(ip, 20));
	put16(udp, sport);
	put16(udp + 2, dport);
	put16(udp + 4, (uint16_t)(8 + plen));   /* checksum 0: none (IPv4 allows it) */
	return udp + 8;
}

static int is_udp(const uint8_t *f, uint32_t len, uint16_t sport, uint16_t dport)
{
	return len >= 42 && get16(f + 12) == ETH_IP && (f[14] >> 4) == 4 && f[14 + 9] == 17 &&
	       get16(f + 14 + 20) == sport && get16(f + 14 + 22) == dport;
}

static int dhcp(uint8_t *yiaddr, uint8_t *router)
{
	static const uint8_t zero[4], all[4] = { 255, 255, 255, 255 };
	uint8_t *b = udp_frame(bcast, zero, all, 68, 67, 300);
	uint32_t len, slot;

	memset(b, 0, 300);
	b[0] = 1;		/* BOOTREQUEST */
	b[1] = 1;		/* Ethernet */
	b[2] = 6;
	b[4] = (uint8_t)(XID >> 24); b[5] = (uint8_t)(XID >> 16); b[6] = (uint8_t)(XID >> 8); b[7] = (uint8_t)XID;
	b[10] = 0x80;		/* broadcast replies */
	memcpy(b + 28, n.mac, 6);
	b[236] = 99; b[237] = 130; b[238] = 83; b[239] = 99;	/* magic cookie */
	b[240] = 53; b[241] = 1; b[242] = 1;			/* DHCPDISCOVER */
	b[243] = 55; b[244] = 2; b[245] = 1; b[246] = 3;	/* want: netmask, router */
	b[247] = 255;
	for (int tries = 0; tries < 5; tries++) {
		if (vnet_send(&n, 14 + 28 + 300)) {
			printf("FAIL tx timeout\n");
			return -1;
		}
		uint8_t *f;
		while ((f = vnet_recv(&n, &len, 1000, &slot))) {
			const uint8_t *p = f + 42;
			int ok = is_udp(f, len, 67, 68) && len >= 42 + 240 && p[0] == 2 &&
				 p[4] == (uint8_t)(XID >> 24) && p[7] == (uint8_t)XID;
			int offer = 0, have_router = 0;
			for (uint32_t i = 240; ok && 42 + i + 1 < len && p[i] != 255;) {
				if (p[i] == 0) {
					i++;
					continue;
				}
				uint8_t t = p[i], l = p[i + 1];
				if (42 + i + 2 + l > len)
					break;
				if (t == 53 && l == 1 && p[i + 2] == 2)
					offer = 1;
				if (t == 3 && l >= 4) {
					memcpy(router, p + i + 2, 4);
					have_router = 1;
				}
				i += 2u + l;
			}
			if (ok && offer && have_router)
				memcpy(yiaddr, p + 16, 4);
			vnet_recycle(&n, slot);
			if (ok && offer && have_router)
				return 0;
		}
	}
	printf("FAIL no DHCP offer\n");
	return -1;
}

static int arp(const uint8_t *sip, const uint8_t *tip, uint8_t *tmac)
{
	uint8_t *f = n.txbuf + VNET_HDR, *a = f + 14;
	uint32_t len, slot;

	memset(n.txbuf, 0, VNET_HDR + 60);
	memcpy(f, bcast, 6);
	memcpy(f + 6, n.mac, 6);
	put16(f + 12, ETH_ARP);
	put16(a, 1);
	put16(a + 2, ETH_IP);
	a[4] = 6;
	a[5] = 4;
	put16(a + 6, 1);	/* request */
	memcpy(a + 8, n.mac, 6);
	memcpy(a + 14, sip, 4);
	memcpy(a + 24, tip, 4);
	for (int tries = 0; tries < 5; tries++) {
		if (vnet_send(&n, 42))
			return -1;
		uint8_t *r;
		while ((r = vnet_recv(&n, &len, 1000, &slot))) {
			int ok = len >= 42 && get16(r + 12) == ETH_ARP && get16(r + 14 + 6) == 2 &&
				 !memcmp(r + 14 + 14, tip, 4);
			if (ok)
				memcpy(tmac, r + 14 + 8, 6);
			vnet_recycle(&n, slot);
			if (ok)
				return 0;
		}
	}
	printf("FAIL no ARP reply\n");
	return -1;
}

int main(const struct tiny_boot_info *bi)
{
	char val[32];
	unsigned long port = 7, count = 3, burst = 0;
	uint8_t me[4], gw[4], gwmac[6];
	uint32_t len, slot;

	if (!cmdline_get(bi->cmdline, "port", val, sizeof(val)))
		parse_ulong(val, &port);
	if (!cmdline_get(bi->cmdline, "count", val, sizeof(val)))
		parse_ulong(val, &count);
	if (!cmdline_get(bi->cmdline, "burst", val, sizeof(val)))
		parse_ulong(val, &burst);
	if (vnet_open(&n, bi->cmdline, NRX, 16))
		return 1;
	virtio_driver_ok(&n.dev);
	vnet_post_rx(&n);

	if (dhcp(me, gw))
		return 1;
	printf("passt: dhcp offer %u.%u.%u.%u router %u.%u.%u.%u\n", me[0], me[1], me[2], me[3],
	       gw[0], gw[1], gw[2], gw[3]);
	if (arp(me, gw, gwmac))
		return 1;
	printf("passt: arp %u.%u.%u.%u is at %02x:%02x:%02x:%02x:%02x:%02x\n", gw[0], gw[1], gw[2],
	       gw[3], gwmac[0], gwmac[1], gwmac[2], gwmac[3], gwmac[4], gwmac[5]);

	for (unsigned long i = 0; i < burst; i++) {
		uint8_t *p = udp_frame(gwmac, me, gw, SPORT, 9, 1200);
		memset(p, (int)(i & 0xff), 1200);
		snprintf((char *)p, 18, "kvmvm-burst %04lu", i);
		if (vnet_send(&n, 42 + 1200)) {
			printf("FAIL tx timeout in burst %lu\n", i);
			return 1;
		}
	}
	if (burst)
		printf("passt: burst of %lu sent\n", burst);
	for (unsigned long i = 0; i < count; i++) {
		uint32_t plen = 18 + (uint32_t)(i * 600 % 1400);
		int got = 0;

		for (int tries = 0; tries < 5 && !got; tries++) {
			uint8_t *p = udp_frame(gwmac, me, gw, SPORT, (uint16_t)port, plen);
			snprintf((char *)p, 18, "kvmvm-passt %04lu", i);
			for (uint32_t k = 17; k < plen; k++)
				p[k] = (uint8_t)(k * 7 + i);
			if (vnet_send(&n, 42 + plen)) {
				printf("FAIL tx timeout\n");
				return 1;
			}
			uint8_t *f;
			while (!got && (f = vnet_recv(&n, &len, 1000, &slot))) {
				if (is_udp(f, len, (uint16_t)port, SPORT) &&
				    get16(f + 14 + 24) == 8 + plen && len >= 42 + plen) {
					uint8_t *q = f + 42;
					int same = !memcmp(q, "kvmvm-passt ", 12);
					for (uint32_t k = 17; same && k < plen; k++)
						same = q[k] == (uint8_t)(k * 7 + i);
					if (!same) {
						printf("FAIL udp echo %lu: payload differs\n", i);
						return 1;
					}
					got = 1;
				}
				vnet_recycle(&n, slot);
			}
		}
		if (!got) {
			printf("FAIL no udp echo %lu\n", i);
			return 1;
		}
		printf("passt: udp echo %lu (%u bytes)\n", i, plen);
	}
	printf("virtio-net-passt: ok\n");
	return 0;
}
