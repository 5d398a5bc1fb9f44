/* halt: an idle VM (cli; hlt forever), for density benchmarks. */
#include "tiny.h"

int main(const struct tiny_boot_info *bi)
{
	(void)bi;
	serial_puts("halt: now\n");
	halt_forever();
}
