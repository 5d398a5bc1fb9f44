/*
 * blk-eio: a drive whose host backing file fails some reads and writes with EIO (a FUSE
 * file in the tests). Sectors [bad, bad+nbad) fail on the host, the rest work. For
 * rounds=<n> rounds (default 3) the guest reads and writes a bad sector, a request that
 * spans a good and a bad sector, then writes a good sector, flushes and reads it back:
 *   blk-eio: round <r>: read bad 1, write bad 1, span 1, good ok
 *   blk-eio: ok <n> rounds       (exit 0)
 * A bad request must end with status 1 (IOERR); any other answer, or a good request that
 * fails: "FAIL ..." and status 3.
 * Arguments: bad=<sector> (default 8), rounds=<n>
 */
#include "tiny.h"
#include "tiny/vblk.h"

int main(const struct tiny_boot_info *bi)
{
	static struct vblk b;
	char arg[32];
	unsigned long bad = 8, rounds = 3;
	uint8_t *buf = tiny_alloc(4096, 4096), *back = tiny_alloc(4096, 4096);

	if (cmdline_get(bi->cmdline, "bad", arg, sizeof(arg)) == 0)
		parse_ulong(arg, &bad);
	if (cmdline_get(bi->cmdline, "rounds", arg, sizeof(arg)) == 0)
		parse_ulong(arg, &rounds);
	if (vblk_open(&b, bi->cmdline, 0)) {
		printf("FAIL no virtio-blk device\n");
		return 1;
	}
	if (bad < 2 || bad >= b.capacity) {
		printf("FAIL bad=%lu outside the drive (%lu sectors)\n", bad, (unsigned long)b.capacity);
		return 1;
	}
	printf("blk-eio: capacity %lu, bad sector %lu\n", (unsigned long)b.capacity, bad);
	for (unsigned long r = 1; r <= rounds; r++) {
		int rd, wr, span, st;

		rd = vblk_req(&b, VBLK_T_IN, bad, buf, 512, 1, 0);
		memset(buf, 0xee, 512);
		wr = vblk_req(&b, VBLK_T_OUT, bad, buf, 512, 1, 0);
		span = vblk_req(&b, VBLK_T_IN, bad - 1, buf, 1024, 2, 0);
		if (rd != 1 || wr != 1 || span != 1) {
			printf("FAIL round %lu: read bad %d, write bad %d, span %d (want 1 each)\n",
			       r, rd, wr, span);
			return 1;
		}
		for (int k = 0; k < 512; k++)
			buf[k] = (uint8_t)(r * 31 + k);
		st = vblk_req(&b, VBLK_T_OUT, 1, buf, 512, 1, 0);
		if (st == 0)
			st = vblk_req(&b, VBLK_T_FLUSH, 0, 0, 0, 1, 0);
		if (st == 0) {
			memset(back, 0, 512);
			st = vblk_req(&b, VBLK_T_IN, 1, back, 512, 2, r & 1);
		}
		if (st || memcmp(buf, back, 512)) {
			printf("FAIL round %lu: good sector after the errors: status %d\n", r, st);
			return 1;
		}
		printf("blk-eio: round %lu: read bad %d, write bad %d, span %d, good ok\n",
		       r, rd, wr, span);
	}
	printf("blk-eio: ok %lu rounds\n", rounds);
	return 0;
}
