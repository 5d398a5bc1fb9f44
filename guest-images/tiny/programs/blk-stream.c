/*
 * blk-stream: a stream of virtio-blk writes and read-backs for snapshot tests, so that
 * requests are in flight whenever the VM is paused. Request i writes sector i % 64 with a
 * pattern made from i, reads it back and checks it; every 32 requests it prints
 * "blk-stream: <i> ok". Any mismatch or error: "FAIL ..." and status 3. Ends after
 * count=<n> requests (default: never) with "blk-stream: done <n>".
 */
#include "tiny.h"
#include "tiny/vblk.h"

int main(const struct tiny_boot_info *bi)
{
	static struct vblk b;
	char arg[32];
	unsigned long count = 0;
	uint8_t *buf = tiny_alloc(4096, 4096), *back = tiny_alloc(4096, 4096);

	if (cmdline_get(bi->cmdline, "count", arg, sizeof(arg)) == 0)
		parse_ulong(arg, &count);
	if (vblk_open(&b, bi->cmdline, 0)) {
		printf("FAIL no virtio-blk device\n");
		return 1;
	}
	printf("blk-stream: ready\n");
	for (unsigned long i = 1; count == 0 || i <= count; i++) {
		uint64_t sector = i % 64;
		for (int k = 0; k < 512; k++)
			buf[k] = (uint8_t)(i * 7 + k);
		memcpy(buf, &i, sizeof(i));
		int st = vblk_req(&b, VBLK_T_OUT, sector, buf, 512, 1, 0);
		if (st) {
			printf("FAIL write %lu status %d\n", i, st);
			return 1;
		}
		memset(back, 0, 512);
		st = vblk_req(&b, VBLK_T_IN, sector, back, 512, 2, 0);
		if (st || memcmp(buf, back, 512)) {
			printf("FAIL read back %lu status %d\n", i, st);
			return 1;
		}
		if (i % 32 == 0)
			printf("blk-stream: %lu ok\n", i);
	}
	printf("blk-stream: done %lu\n", count);
	return 0;
}
