/* pio-loop N: N one-byte writes to port 0x80 (an exit each), for benchmarks. */
#include "tiny.h"

int main(const struct tiny_boot_info *bi)
{
	char arg[32];
	unsigned long n, i;

	if (cmdline_arg(bi->cmdline, 0, arg, sizeof(arg)) || parse_ulong(arg, &n))
		n = 100000;
	for (i = 0; i < n; i++)
		outb(POST_PORT, (uint8_t)i);
	printf("pio-loop %lu done\n", n);
	return 0;
}
