/*
 * mmio-loop N [addr=A]: N 4-byte writes to MMIO address A (default
 * 0xd0f00000, unmapped: an exit each), for exit benchmarks next to pio-loop.
 */
#include "tiny.h"

#define DEFAULT_ADDR	0xd0f00000ul

int main(const struct tiny_boot_info *bi)
{
	char arg[32];
	unsigned long n, addr, i;

	if (cmdline_arg(bi->cmdline, 0, arg, sizeof(arg)) || parse_ulong(arg, &n))
		n = 100000;
	if (cmdline_get(bi->cmdline, "addr", arg, sizeof(arg)) || parse_ulong(arg, &addr) ||
	    addr >= 0x100000000ul)
		addr = DEFAULT_ADDR;
	for (i = 0; i < n; i++)
		mmio_write32(addr, (uint32_t)i);
	printf("mmio-loop %lu done\n", n);
	return 0;
}
