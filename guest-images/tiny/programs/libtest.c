/*
 * libtest: checks the tiny library itself (printf formats, strtoul,
 * cmdline parsing, allocator). Prints "libtest: N checks ok" and ends with
 * success, or prints each failure and exits with debug-exit 2.
 */
#include "tiny.h"

static int checks, failures;

static void expect_str(const char *what, const char *got, const char *want)
{
	checks++;
	if (strcmp(got, want)) {
		failures++;
		printf("FAIL %s: got '%s' want '%s'\n", what, got, want);
	}
}

static void expect_num(const char *what, unsigned long got, unsigned long want)
{
	checks++;
	if (got != want) {
		failures++;
		printf("FAIL %s: got 0x%lx want 0x%lx\n", what, got, want);
	}
}

static void test_printf(void)
{
	char b[64];

	snprintf(b, sizeof(b), "%d %i %u", -42, 7, 4000000000u);
	expect_str("int", b, "-42 7 4000000000");
	snprintf(b, sizeof(b), "%x %X %lx", 0xbeefu, 0xbeefu, 0x123456789abcdeful);
	expect_str("hex", b, "beef BEEF 123456789abcdef");
	snprintf(b, sizeof(b), "%ld %lu %llu", -9000000000l, 18446744073709551615ul, 1ull);
	expect_str("long", b, "-9000000000 18446744073709551615 1");
	snprintf(b, sizeof(b), "[%08x] [%5d] [%-5d] [%05d]", 0xabcu, 42, 42, -42);
	expect_str("width", b, "[00000abc] [   42] [42   ] [-0042]");
	snprintf(b, sizeof(b), "%s|%-4s|%4s|%c|%%|%p", "ab", "x", "y", 'z', (void *)0x1000);
	expect_str("misc", b, "ab|x   |   y|z|%|0x1000");
	snprintf(b, sizeof(b), "%zu", (size_t)12);
	expect_str("size_t", b, "12");
	expect_num("snprintf len", snprintf(b, 4, "abcdef"), 6);
	expect_str("snprintf trunc", b, "abc");
}

static void test_strtoul(void)
{
	unsigned long v = 0;
	char *end;

	expect_num("dec", strtoul("1234", NULL, 0), 1234);
	expect_num("hex", strtoul("0x3f8", NULL, 0), 0x3f8);
	expect_num("oct", strtoul("010", NULL, 0), 8);
	expect_num("base16", strtoul("ff", NULL, 16), 255);
	strtoul("12ab", &end, 10);
	expect_str("end", end, "ab");
	expect_num("parse ok", parse_ulong("0x10", &v), 0);
	expect_num("parse val", v, 16);
	expect_num("parse garbage", (unsigned long)parse_ulong("12x", &v), (unsigned long)-1);
	expect_num("parse empty", (unsigned long)parse_ulong("", &v), (unsigned long)-1);
}

static void test_cmdline(void)
{
	const char *cl = "  one  key=val\tk2=0x5 two three=  ";
	char b[16];

	expect_num("get", cmdline_get(cl, "key", b, sizeof(b)), 0);
	expect_str("get val", b, "val");
	expect_num("get k2", cmdline_get(cl, "k2", b, sizeof(b)), 0);
	expect_str("get k2 val", b, "0x5");
	expect_num("get empty", cmdline_get(cl, "three", b, sizeof(b)), 0);
	expect_str("get empty val", b, "");
	expect_num("get missing", (unsigned long)cmdline_get(cl, "ke", b, sizeof(b)),
		   (unsigned long)-1);
	expect_num("arg0", cmdline_arg(cl, 0, b, sizeof(b)), 0);
	expect_str("arg0 val", b, "one");
	expect_num("arg1", cmdline_arg(cl, 1, b, sizeof(b)), 0);
	expect_str("arg1 val", b, "two");
	expect_num("arg2", (unsigned long)cmdline_arg(cl, 2, b, sizeof(b)), (unsigned long)-1);
	expect_num("has", cmdline_has(cl, "two"), 1);
	expect_num("has not", cmdline_has(cl, "tw"), 0);
	expect_num("empty", (unsigned long)cmdline_arg("", 0, b, sizeof(b)), (unsigned long)-1);
}

static void test_alloc(void)
{
	uint8_t *a = tiny_alloc_pages(2);
	uint8_t *b = tiny_alloc(10, 64);

	checks++;
	if (!a || !b || (uint64_t)a & 4095 || (uint64_t)b & 63 ||
	    a < (uint8_t *)__image_end || b < a + 8192 || a[0] || a[8191]) {
		failures++;
		printf("FAIL alloc: %p %p (image end %p)\n", a, b, __image_end);
	}
	memset(a, 0x5a, 8192);
	expect_num("alloc rw", a[8191], 0x5a);
}

int main(const struct tiny_boot_info *bi)
{
	(void)bi;
	test_printf();
	test_strtoul();
	test_cmdline();
	test_alloc();
	if (failures) {
		printf("libtest: %d of %d checks failed\n", failures, checks);
		return 2;
	}
	printf("libtest: %d checks ok\n", checks);
	return 0;
}
