/*
 * flood: a guest that never stops asking, to prove that a stop request still ends the VM
 * within a second and that the VMM's threads are not held hostage. mode=<m>:
 *   rng      keeps the virtio-rng ring full for ever (every completion is re-posted at once)
 *   blk      the same with virtio-blk reads whose data the device DMAs onto the avail ring
 *            itself (the ring entries are rewritten by the device on every request)
 *   reset    floods virtio-rng and resets the device in the middle of it, over and over
 *   serial   writes to the console for ever (the host may not be reading)
 *   pio      hammers the UART's registers and an unmapped port for ever
 *   mmio     hammers every virtio-mmio register of every device, and unmapped MMIO, for ever
 *   qoff     QueueReady=0 on a live queue: the device must stop using the old rings
 *            (prints "qoff: no answer from a switched-off queue"), then recovers after reset
 *   halt     fills the rng ring, then halts with interrupts off (no vCPU runs again)
 *   storm    every vCPU at once (cpus=<n>, default 1; lib/smp.c starts the others) hammers
 *            the UART's registers and its output, unmapped ports, every virtio-mmio register
 *            of every device and unmapped MMIO, for ever; prints "flood storm: <n> cpus
 *            running" when all of them have started (they begin together after it)
 * Every flooding mode first prints "flood <m>: running" (storm: as above).
 */
#include "tiny.h"
#include "tiny/virtio.h"
#include "tiny/vblk.h"
#include "tiny/smp.h"

#define RNG_Q 64

static struct vdev d;
static struct vq q;

static int rng_open(const struct tiny_boot_info *bi)
{
	if (virtio_find(bi->cmdline, VIRTIO_ID_RNG, 0, &d) || virtio_init(&d, 0) ||
	    vq_setup(&d, &q, 0, RNG_Q))
		return -1;
	virtio_driver_ok(&d);
	return 0;
}

static uint16_t used_idx(struct vq *v)
{
	return *(volatile uint16_t *)(v->used + 2);
}

/* post one-descriptor chains until the ring is full; kick once */
static void refill_rng(uint8_t *buf)
{
	while ((uint16_t)(q.avail[1] - used_idx(&q)) < q.size) {
		struct vbuf b = { (uint64_t)buf + (q.avail[1] % q.size) * 64, 64, 1 };

		vq_add(&q, &b, 1);
	}
	vq_kick(&q);
}

static void flood_rng(const struct tiny_boot_info *bi, int resets)
{
	uint8_t *buf = tiny_alloc(64 * RNG_Q, 4096);
	unsigned long n = 0;

	if (rng_open(bi))
		panic("no virtio-rng device");
	printf("flood %s: running\n", resets ? "reset" : "rng");
	for (;;) {
		refill_rng(buf);
		if (resets && (++n & 63) == 0) {
			vreg_write(&d, VIRTIO_MMIO_STATUS, 0);	/* while the device is busy */
			if (rng_open(bi))
				panic("rng did not come back after reset");
		}
	}
}

/*
 * virtio-blk: every request reads the ring's own entries back from sector 0 (which holds
 * the same values), so the device's DMA rewrites the avail ring while it walks it.
 */
static void flood_blk(const struct tiny_boot_info *bi)
{
	static struct vblk b;
	struct vblk_hdr *hdr = tiny_alloc(16, 16);
	uint8_t *status = tiny_alloc(RNG_Q, 16);
	uint16_t per = 3, nreq;

	if (vblk_open(&b, bi->cmdline, 0))
		panic("no virtio-blk device");
	nreq = b.q.size / per;
	hdr->type = VBLK_T_IN;
	hdr->sector = 0;
	/* the ring entries as they will be: request r uses descriptors 3r, 3r+1, 3r+2 */
	for (uint16_t i = 0; i < b.q.size; i++)
		b.q.avail[2 + i] = (uint16_t)((i % nreq) * per);
	uint8_t *ring = (uint8_t *)&b.q.avail[2];
	uint32_t ring_len = 2u * b.q.size;
	if (vblk_req(&b, VBLK_T_OUT, 0, ring, ring_len, 1, 0) != 0)
		panic("blk: cannot write the ring image");
	for (uint16_t r = 0; r < nreq; r++) {
		struct vring_desc *t = &b.q.desc[r * per];

		t[0] = (struct vring_desc){ (uint64_t)hdr, 16, VRING_F_NEXT, (uint16_t)(r * per + 1) };
		t[1] = (struct vring_desc){ (uint64_t)ring, ring_len, VRING_F_WRITE | VRING_F_NEXT,
					    (uint16_t)(r * per + 2) };
		t[2] = (struct vring_desc){ (uint64_t)&status[r], 1, VRING_F_WRITE, 0 };
	}
	printf("flood blk: running\n");
	for (;;) {
		uint16_t idx = b.q.avail[1];

		/* at most nreq requests in flight: each has its own descriptors */
		while ((uint16_t)(idx - used_idx(&b.q)) < nreq)
			idx++;
		mb();
		b.q.avail[1] = idx;
		mb();
		vq_kick(&b.q);
	}
}

static void flood_serial(void)
{
	static const char line[] = "flood serial: 0123456789abcdefghijklmnopqrstuvwxyz\n";

	printf("flood serial: running\n");
	for (;;)
		serial_write(line, sizeof(line) - 1);
}

static void flood_pio(void)
{
	printf("flood pio: running\n");
	for (uint32_t n = 0;; n++) {
		outb(COM1_PORT + 1, 0);		/* IER */
		(void)inb(COM1_PORT + 5);	/* LSR */
		(void)inb(COM1_PORT + 2);	/* IIR */
		outb(COM1_PORT + 7, (uint8_t)n);	/* scratch */
		(void)inl(0x1234);		/* nothing there */
		outw(0x5678, (uint16_t)n);
	}
}

static void flood_mmio(const struct tiny_boot_info *bi)
{
	static struct vdev all[16];
	int n = virtio_scan(bi->cmdline, all, 16);

	printf("flood mmio: running (%d devices)\n", n);
	for (uint32_t k = 0;; k++) {
		for (int i = 0; i < n; i++) {
			for (uint32_t off = 0; off < 0x100; off += 4) {
				(void)mmio_read32(all[i].base + off);
				if (off != VIRTIO_MMIO_STATUS && off != VIRTIO_MMIO_QUEUE_NOTIFY)
					mmio_write32(all[i].base + off, k * 2654435761u + off);
			}
			mmio_write32(all[i].base + VIRTIO_MMIO_QUEUE_NOTIFY, k & 3);
			mmio_write32(all[i].base + VIRTIO_MMIO_STATUS, k & 0xff);
		}
		(void)mmio_read32(0xd0800000ull);	/* unmapped */
		mmio_write32(0xd0800000ull, k);
	}
}

static struct vdev storm_devs[16];
static int storm_ndevs;
static volatile int storm_go;

/* one vCPU's share of the storm: a mix of every kind of exit, the registers of shared
 * devices included, so that the VMM's per-device locking sees all vCPUs at once */
static void storm(uint32_t cpu)
{
	while (!__atomic_load_n(&storm_go, __ATOMIC_SEQ_CST))
		cpu_relax();
	for (uint32_t k = cpu * 7919;; k++) {
		outb(COM1_PORT + 1, 0);			/* IER */
		(void)inb(COM1_PORT + 5);		/* LSR */
		(void)inb(COM1_PORT + 2);		/* IIR */
		outb(COM1_PORT + 7, (uint8_t)k);	/* scratch */
		outb(COM1_PORT, (uint8_t)('0' + cpu));	/* THR: console output */
		(void)inl(0x1234 + (k & 0xf0));		/* nothing there */
		outw(0x5678, (uint16_t)k);
		for (int i = 0; i < storm_ndevs; i++) {
			uint32_t off = (k * 4) & 0xfc;

			(void)mmio_read32(storm_devs[i].base + off);
			if (off != VIRTIO_MMIO_STATUS && off != VIRTIO_MMIO_QUEUE_NOTIFY)
				mmio_write32(storm_devs[i].base + off, k * 2654435761u + off);
			(void)mmio_read32(storm_devs[i].base + 0x100 + (k & 0x3c));	/* config */
			if ((k & 63) == 0) {
				mmio_write32(storm_devs[i].base + VIRTIO_MMIO_QUEUE_NOTIFY, k & 3);
				mmio_write32(storm_devs[i].base + VIRTIO_MMIO_STATUS, (k >> 6) & 0xff);
			}
		}
		(void)mmio_read32(0xd0800000ull + (cpu << 12));	/* unmapped */
		mmio_write32(0xd0800000ull + (cpu << 12), k);
	}
}

static void flood_storm(const struct tiny_boot_info *bi)
{
	char arg[16];
	unsigned long cpus = 1;

	if (cmdline_get(bi->cmdline, "cpus", arg, sizeof(arg)) == 0)
		parse_ulong(arg, &cpus);
	if (cpus < 1 || cpus > SMP_MAX_CPUS)
		panic("cpus must be 1..8");
	storm_ndevs = virtio_scan(bi->cmdline, storm_devs, 16);
	smp_init(storm);
	for (uint32_t id = 1; id < cpus; id++)
		if (smp_start(id))
			panic("an application processor did not start");
	printf("flood storm: %u cpus running (%d devices)\n", smp_cpus_up(), storm_ndevs);
	__atomic_store_n(&storm_go, 1, __ATOMIC_SEQ_CST);
	storm(0);
}

static void queue_off(const struct tiny_boot_info *bi)
{
	uint8_t *buf = tiny_alloc(4096, 4096);
	struct vbuf one = { (uint64_t)buf, 64, 1 };
	uint32_t id, len;

	if (rng_open(bi))
		panic("no virtio-rng device");
	vreg_write(&d, VIRTIO_MMIO_QUEUE_SEL, 0);
	vreg_write(&d, VIRTIO_MMIO_QUEUE_READY, 0);
	printf("qoff: QueueReady reads %u\n", vreg_read(&d, VIRTIO_MMIO_QUEUE_READY));
	vq_add(&q, &one, 1);
	vq_kick(&q);
	if (vq_wait(&q, &id, &len, 500) == 0)
		panic("a switched-off queue was still used");
	printf("qoff: no answer from a switched-off queue\n");
	vreg_write(&d, VIRTIO_MMIO_STATUS, 0);
	if (rng_open(bi))
		panic("rng did not come back after reset");
	vq_add(&q, &one, 1);
	vq_kick(&q);
	if (vq_wait(&q, &id, &len, 5000) || len != 64)
		panic("no answer after reset");
	printf("qoff: recovered after reset\n");
}

int main(const struct tiny_boot_info *bi)
{
	char mode[32] = "";

	cmdline_get(bi->cmdline, "mode", mode, sizeof(mode));
	if (!strcmp(mode, "rng"))
		flood_rng(bi, 0);
	else if (!strcmp(mode, "reset"))
		flood_rng(bi, 1);
	else if (!strcmp(mode, "blk"))
		flood_blk(bi);
	else if (!strcmp(mode, "serial"))
		flood_serial();
	else if (!strcmp(mode, "pio"))
		flood_pio();
	else if (!strcmp(mode, "mmio"))
		flood_mmio(bi);
	else if (!strcmp(mode, "storm"))
		flood_storm(bi);
	else if (!strcmp(mode, "qoff"))
		queue_off(bi);
	else if (!strcmp(mode, "halt")) {
		uint8_t *buf = tiny_alloc(64 * RNG_Q, 4096);

		if (rng_open(bi))
			panic("no virtio-rng device");
		refill_rng(buf);
		printf("flood halt: running\n");
		halt_forever();
	} else {
		printf("FAIL unknown mode '%s'\n", mode);
		return 1;
	}
	printf("flood: done\n");
	return 0;
}
