/*
 * virtio-evil: an adversarial driver. mode=<m> submits one malformed request to the
 * virtio-rng device, then reads the status register:
 *   oob       buffer outside guest RAM           wrap      address + length wraps 2^64
 *   loop      descriptor 0 -> 1 -> 0             huge      length 0xffffffff
 *   ilong     indirect table of 4095 entries     iloop     loop inside an indirect table
 *   inest     indirect inside indirect           availidx  avail idx 1000 ahead
 *   usedring  used ring outside guest RAM        garbage   garbage register writes
 *   badhead   avail ring names descriptor 5000
 *   unaligned descriptor table not 16-byte aligned     qsize0    QueueNum 0
 *   qsize3    QueueNum not a power of two              qbig      QueueNum above the maximum
 *   mmioring  avail ring inside the device's own MMIO window (not RAM)
 *   wafter    a readable descriptor after a writable one
 *   inext     an indirect descriptor that also has NEXT
 *   izero     an indirect table of length 0            noftok    DRIVER_OK without FEATURES_OK
 * Prints "evil <m>: status 0x<s> needs_reset=<0|1>", then checks that a virtio-blk
 * device (if any) still works ("evil: other device ok"), resets the rng device and reads
 * from it again ("evil: recovered after reset"), and ends with "virtio-evil: done".
 */
#include "tiny.h"
#include "tiny/virtio.h"
#include "tiny/vblk.h"

static struct vdev d;
static struct vq q;

/* re-arm queue 0 with one register changed: a set-up the device must refuse */
static void requeue(uint32_t reg, uint64_t v)
{
	vreg_write(&d, VIRTIO_MMIO_QUEUE_READY, 0);
	vreg_write(&d, reg, (uint32_t)v);
	if (reg != VIRTIO_MMIO_QUEUE_NUM)
		vreg_write(&d, reg + 4, (uint32_t)(v >> 32));
	vreg_write(&d, VIRTIO_MMIO_QUEUE_READY, 1);
}

static int rng_setup_bad(uint32_t reg, uint64_t v)
{
	if (virtio_init(&d, 1ull << VIRTIO_F_INDIRECT_DESC) || vq_setup(&d, &q, 0, 16))
		return -1;
	if (reg)
		requeue(reg, v);
	virtio_driver_ok(&d);
	return 0;
}

static int rng_setup(uint64_t used_override)
{
	return rng_setup_bad(used_override ? VIRTIO_MMIO_QUEUE_USED : 0, used_override);
}

/* queue set-ups that must be refused: 1 when mode is one of them */
static int bad_queue_mode(const char *mode)
{
	static const struct { const char *mode; uint32_t reg; } bad[] = {
		{ "unaligned", VIRTIO_MMIO_QUEUE_DESC }, { "qsize0", VIRTIO_MMIO_QUEUE_NUM },
		{ "qsize3", VIRTIO_MMIO_QUEUE_NUM }, { "qbig", VIRTIO_MMIO_QUEUE_NUM },
		{ "mmioring", VIRTIO_MMIO_QUEUE_AVAIL },
	};

	for (unsigned int i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (strcmp(mode, bad[i].mode))
			continue;
		uint64_t v = !strcmp(mode, "unaligned") ? 0x100008 : !strcmp(mode, "qsize0") ? 0
			   : !strcmp(mode, "qsize3") ? 3 : !strcmp(mode, "qbig") ? 4096 : d.base;
		rng_setup_bad(bad[i].reg, v);
		return 1;
	}
	if (!strcmp(mode, "noftok")) {	/* ACK, DRIVER, then DRIVER_OK straight away */
		vreg_write(&d, VIRTIO_MMIO_STATUS, 0);
		vreg_write(&d, VIRTIO_MMIO_STATUS, VIRTIO_S_ACK | VIRTIO_S_DRIVER);
		vreg_write(&d, VIRTIO_MMIO_STATUS, VIRTIO_S_ACK | VIRTIO_S_DRIVER | VIRTIO_S_DRIVER_OK);
		return 1;
	}
	return 0;
}

static void garbage(void)
{
	static const uint32_t vals[] = { 0xffffffff, 0, 0x80000000, 3, 0x12345678 };

	for (uint32_t off = 0; off < 0x100; off += 4)
		if (off != VIRTIO_MMIO_STATUS)
			vreg_write(&d, off, vals[(off / 4) % 5]);
	mmio_write8(d.base + VIRTIO_MMIO_STATUS, 0xff);		/* wrong size: ignored */
	mmio_write16(d.base + 0x52, 0xffff);			/* misaligned */
	mmio_write64(d.base + 0x100, 0xffffffffffffffffull);	/* config of a device without one */
	mmio_write32(d.base + 0xffc, 0xdeadbeef);
	vreg_write(&d, VIRTIO_MMIO_QUEUE_SEL, 0);
	vreg_write(&d, VIRTIO_MMIO_QUEUE_NUM, 3);		/* not a power of two */
	vreg_write(&d, VIRTIO_MMIO_QUEUE_READY, 1);
	vreg_write(&d, VIRTIO_MMIO_STATUS, 0xff & ~VIRTIO_S_NEEDS_RESET);
	vreg_write(&d, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	vreg_write(&d, VIRTIO_MMIO_QUEUE_NOTIFY, 0xffff);
}

static uint64_t ram_end(const struct tiny_boot_info *bi)
{
	uint64_t end = 0;

	for (unsigned int i = 0; i < bi->nr_mem; i++)
		if (bi->mem[i].type == TINY_MEM_RAM && bi->mem[i].addr + bi->mem[i].size > end)
			end = bi->mem[i].addr + bi->mem[i].size;
	return end;
}

int main(const struct tiny_boot_info *bi)
{
	char mode[32] = "";
	uint8_t *buf = tiny_alloc(4096, 4096);
	struct vring_desc *t = tiny_alloc(16 * 4096, 4096);
	uint64_t outside = (ram_end(bi) + 0x10000000ull) & ~0xfffull;
	uint32_t id, len, st;
	static struct vblk b;

	cmdline_get(bi->cmdline, "mode", mode, sizeof(mode));
	if (virtio_find(bi->cmdline, VIRTIO_ID_RNG, 0, &d)) {
		printf("FAIL no virtio-rng device\n");
		return 1;
	}
	if (!strcmp(mode, "garbage")) {
		garbage();
	} else if (bad_queue_mode(mode)) {
		/* nothing more: the queue or the device could not become ready */
	} else if (rng_setup(!strcmp(mode, "usedring") ? outside : 0)) {
		printf("FAIL rng setup\n");
		return 1;
	} else if (!strcmp(mode, "usedring")) {
		/* nothing more: the queue could not become ready */
	} else {
		struct vring_desc *dt = q.desc;

		dt[0] = (struct vring_desc){ (uint64_t)buf, 64, VRING_F_WRITE, 0 };
		if (!strcmp(mode, "oob")) {
			dt[0].addr = outside;
		} else if (!strcmp(mode, "wrap")) {
			dt[0].addr = 0xfffffffffffff000ull;
			dt[0].len = 0x2000;
		} else if (!strcmp(mode, "loop")) {
			dt[0].flags |= VRING_F_NEXT;
			dt[0].next = 1;
			dt[1] = (struct vring_desc){ (uint64_t)buf, 64, VRING_F_WRITE | VRING_F_NEXT, 0 };
		} else if (!strcmp(mode, "huge")) {
			dt[0].len = 0xffffffff;
		} else if (!strcmp(mode, "ilong")) {
			dt[0] = (struct vring_desc){ (uint64_t)t, 16 * 4095, VRING_F_INDIRECT, 0 };
		} else if (!strcmp(mode, "iloop")) {
			t[0] = (struct vring_desc){ (uint64_t)buf, 64, VRING_F_WRITE | VRING_F_NEXT, 1 };
			t[1] = (struct vring_desc){ (uint64_t)buf, 64, VRING_F_WRITE | VRING_F_NEXT, 0 };
			dt[0] = (struct vring_desc){ (uint64_t)t, 32, VRING_F_INDIRECT, 0 };
		} else if (!strcmp(mode, "inest")) {
			t[0] = (struct vring_desc){ (uint64_t)t, 16, VRING_F_INDIRECT, 0 };
			dt[0] = (struct vring_desc){ (uint64_t)t, 16, VRING_F_INDIRECT, 0 };
		} else if (!strcmp(mode, "availidx")) {
			q.avail[1] = 999;
		} else if (!strcmp(mode, "wafter")) {
			dt[0].flags |= VRING_F_NEXT;
			dt[0].next = 1;
			dt[1] = (struct vring_desc){ (uint64_t)buf, 64, 0, 0 };
		} else if (!strcmp(mode, "inext")) {
			t[0] = (struct vring_desc){ (uint64_t)buf, 64, VRING_F_WRITE, 0 };
			dt[0] = (struct vring_desc){ (uint64_t)t, 16, VRING_F_INDIRECT | VRING_F_NEXT, 1 };
			dt[1] = (struct vring_desc){ (uint64_t)buf, 64, VRING_F_WRITE, 0 };
		} else if (!strcmp(mode, "izero")) {
			dt[0] = (struct vring_desc){ (uint64_t)t, 0, VRING_F_INDIRECT, 0 };
		} else if (!strcmp(mode, "badhead")) {
			q.avail[2] = 5000;
			q.avail[1] = 1;
		} else {
			printf("FAIL unknown mode '%s'\n", mode);
			return 1;
		}
		if (strcmp(mode, "badhead"))
			vq_publish(&q, 0);
		vq_kick(&q);
		vq_wait(&q, &id, &len, 2000);
	}
	st = virtio_status(&d);
	printf("evil %s: status 0x%x needs_reset=%d\n", mode, st, !!(st & VIRTIO_S_NEEDS_RESET));

	if (vblk_open(&b, bi->cmdline, 0) == 0) {
		if (vblk_req(&b, VBLK_T_IN, 0, buf, 512, 1, 0) != 0) {
			printf("FAIL other device broken too\n");
			return 1;
		}
		printf("evil: other device ok\n");
	}
	vreg_write(&d, VIRTIO_MMIO_STATUS, 0);
	if (virtio_status(&d) != 0 || rng_setup(0)) {
		printf("FAIL reset did not clear the device\n");
		return 1;
	}
	struct vbuf one = { (uint64_t)buf, 64, 1 };
	vq_add(&q, &one, 1);
	vq_kick(&q);
	if (vq_wait(&q, &id, &len, 5000) || len != 64) {
		printf("FAIL no answer after reset\n");
		return 1;
	}
	printf("evil: recovered after reset\n");
	printf("virtio-evil: done\n");
	return 0;
}
