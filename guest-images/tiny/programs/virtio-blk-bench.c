/*
 * virtio-blk-bench: count=N requests of size=S bytes (default 1000 x 4096) on the first
 * drive, reads (or writes with "write"), one at a time, polled. Prints
 *   bench: <N> requests <S> bytes <tsc ticks>
 */
#include "tiny.h"
#include "tiny/vblk.h"

int main(const struct tiny_boot_info *bi)
{
	static struct vblk b;
	char val[32];
	unsigned long count = 1000, size = 4096;
	int write = cmdline_has(bi->cmdline, "write");

	if (!cmdline_get(bi->cmdline, "count", val, sizeof(val)))
		parse_ulong(val, &count);
	if (!cmdline_get(bi->cmdline, "size", val, sizeof(val)))
		parse_ulong(val, &size);
	if (vblk_open(&b, bi->cmdline, 0)) {
		printf("FAIL no virtio-blk device\n");
		return 1;
	}
	uint8_t *buf = tiny_alloc(size, 4096);
	uint64_t span = b.capacity * 512 / size, t0 = rdtsc();

	for (unsigned long i = 0; i < count; i++) {
		uint64_t sector = (i % span) * size / 512;

		if (vblk_req(&b, write ? VBLK_T_OUT : VBLK_T_IN, sector, buf, size, 1, 0)) {
			printf("FAIL request %lu\n", i);
			return 1;
		}
	}
	printf("bench: %lu requests %lu bytes %lu\n", count, size, (unsigned long)(rdtsc() - t0));
	return 0;
}
