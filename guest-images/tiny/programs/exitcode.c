/* exitcode N: print "exitcode N", then write N to debug-exit (status 2N+1). */
#include "tiny.h"

int main(const struct tiny_boot_info *bi)
{
	char arg[32];
	unsigned long n;

	if (cmdline_arg(bi->cmdline, 0, arg, sizeof(arg)) || parse_ulong(arg, &n) ||
	    n > 255)
		n = 1;
	printf("exitcode %lu\n", n);
	debug_exit((uint8_t)n);
}
