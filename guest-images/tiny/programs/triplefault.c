/* triplefault: announce it, then triple fault (kvmvm: failure, status 1). */
#include "tiny.h"

int main(const struct tiny_boot_info *bi)
{
	(void)bi;
	serial_puts("triplefault: now\n");
	triple_fault();
}
