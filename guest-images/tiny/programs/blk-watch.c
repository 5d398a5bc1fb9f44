/*
 * blk-watch: prints the first bytes of sector 0 of the first virtio-blk drive, then waits
 * for a configuration change (the host swapped the drive's backing file: Firecracker's
 * PATCH /drives), re-reads the capacity and sector 0, prints both and debug-exits 0x21
 * (host status 67). Lines: "blk-watch: <capacity> <text>".
 */
#include "tiny.h"
#include "tiny/vblk.h"

#define REG_CONFIG_GEN	0x0fc
#define REG_CONFIG	0x100

static void show(struct vblk *b, uint8_t *buf)
{
	memset(buf, 0, 512);
	if (vblk_req(b, VBLK_T_IN, 0, buf, 512, 1, 0)) {
		printf("FAIL read\n");
		debug_exit(3);
	}
	buf[32] = 0;
	for (int i = 0; i < 32; i++)
		if (buf[i] && (buf[i] < 32 || buf[i] > 126))
			buf[i] = '.';
	printf("blk-watch: %lu %s\n", (unsigned long)b->capacity, (char *)buf);
}

int main(const struct tiny_boot_info *bi)
{
	static struct vblk b;
	uint8_t *buf = tiny_alloc(4096, 4096);

	if (vblk_open(&b, bi->cmdline, 0)) {
		printf("FAIL no virtio-blk device\n");
		return 1;
	}
	show(&b, buf);
	uint32_t gen = vreg_read(&b.dev, REG_CONFIG_GEN);
	while (vreg_read(&b.dev, REG_CONFIG_GEN) == gen)
		for (volatile int i = 0; i < 2000; i++)
			;
	b.capacity = (uint64_t)vreg_read(&b.dev, REG_CONFIG) |
		     ((uint64_t)vreg_read(&b.dev, REG_CONFIG + 4) << 32);
	show(&b, buf);
	debug_exit(0x21);
}
