/*
 * virtio-blk: for every drive on the command line, print capacity and id; on a
 * read-write drive write sector 1 (direct, several segments), flush, read it back
 * (indirect) and check; on a read-only drive expect the write to fail with IOERR.
 *   blk<i>: capacity <sectors> id '<id>' ro=<0|1>
 *   blk<i>: sector0 '<first 16 bytes>'
 *   blk<i>: write+flush+read ok | blk<i>: write rejected (status 1)
 *   virtio-blk: ok            (exit 0; any failure: "FAIL ..." and status 3)
 * Arguments: word=<text> (what goes into sector 1, default "kvmvm"); segs=<n> (descriptors
 * of the write, default 3: 341+341+342 bytes); skew=<n> (the data buffers start n bytes past
 * a page boundary, default 0: unaligned buffers for a direct drive's bounce path); len=<n>
 * (bytes written from sector 1 on and read back, a multiple of 512 up to 1 MiB, default 1024)
 */
#include "tiny.h"
#include "tiny/vblk.h"

/* a != b over len bytes (a multiple of 8): 8 bytes a step, as emulated guest code is slow */
static int differ(const uint8_t *a, const uint8_t *b, unsigned long len)
{
	for (unsigned long k = 0; k < len; k += 8)
		if (*(const uint64_t *)(a + k) != *(const uint64_t *)(b + k))
			return 1;
	return 0;
}

static int fail(const char *what, int i, int st)
{
	printf("FAIL blk%d: %s (status %d, device status 0x%x)\n", i, what, st, 0);
	return 1;
}

int main(const struct tiny_boot_info *bi)
{
	static struct vblk b;
	char word[64] = "kvmvm";
	char id[21];
	char num[16];
	uint8_t *buf, *back;
	unsigned long segs = 3, skew = 0, len = 1024, wl;
	int i, st;

	cmdline_get(bi->cmdline, "word", word, sizeof(word));
	if (cmdline_get(bi->cmdline, "segs", num, sizeof(num)) == 0)
		parse_ulong(num, &segs);
	if (cmdline_get(bi->cmdline, "skew", num, sizeof(num)) == 0)
		parse_ulong(num, &skew);
	if (cmdline_get(bi->cmdline, "len", num, sizeof(num)) == 0)
		parse_ulong(num, &len);
	if (segs < 1 || segs > 60 || skew > 2048 || !len || len % 512 || len > (1ul << 20)) {
		printf("FAIL segs must be 1-60, skew 0-2048, len a multiple of 512 up to 1 MiB\n");
		return 1;
	}
	buf = tiny_alloc(len + 4096, 4096);
	back = tiny_alloc(len + 4096, 4096);
	if (!buf || !back) {
		printf("FAIL out of memory\n");
		return 1;
	}
	buf += skew;
	back += skew;
	wl = strlen(word);
	if (!wl) {
		printf("FAIL word must not be empty\n");
		return 1;
	}
	for (i = 0; vblk_open(&b, bi->cmdline, i) == 0; i++) {
		memset(id, 0, sizeof(id));
		st = vblk_req(&b, VBLK_T_GET_ID, 0, id, 20, 1, 0);
		if (st)
			return fail("get-id", i, st) ? 1 : 1;
		printf("blk%d: capacity %lu id '%s' ro=%d\n", i, (unsigned long)b.capacity, id, b.ro);
		st = vblk_req(&b, VBLK_T_IN, 0, buf, 512, 1, 0);
		if (st)
			return fail("read sector 0", i, st);
		buf[16] = 0;
		for (int k = 0; k < 16; k++)
			if (buf[k] < 32 || buf[k] > 126)
				buf[k] = '.';
		printf("blk%d: sector0 '%s'\n", i, (char *)buf);
		for (unsigned long k = 0; k < wl && k < len; k++)
			buf[k] = (uint8_t)word[k];
		for (unsigned long n = wl; n < len; n *= 2)	/* the word again and again */
			memcpy(buf + n, buf, n < len - n ? n : len - n);
		st = vblk_req(&b, VBLK_T_OUT, 1, buf, (uint32_t)len, (int)segs, 0);
		if (b.ro) {
			if (st != 1)
				return fail("write to a read-only drive did not fail", i, st);
			printf("blk%d: write rejected (status %d)\n", i, st);
			continue;
		}
		if (st)
			return fail("write", i, st);
		st = vblk_req(&b, VBLK_T_FLUSH, 0, 0, 0, 1, 0);
		if (st)
			return fail("flush", i, st);
		memset(back, 0, len);
		st = vblk_req(&b, VBLK_T_IN, 1, back, (uint32_t)len, 4, 1);
		if (st || differ(buf, back, len))
			return fail("read back", i, st);
		st = vblk_req(&b, VBLK_T_IN, b.capacity, back, 512, 1, 0);
		if (st != 1)
			return fail("read past the end did not fail", i, st);
		printf("blk%d: write+flush+read ok\n", i);
	}
	if (i == 0) {
		printf("FAIL no virtio-blk device\n");
		return 1;
	}
	printf("virtio-blk: ok\n");
	return 0;
}
