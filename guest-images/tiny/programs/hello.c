/* hello: one line on COM1, then a success ending. */
#include "tiny.h"

int main(const struct tiny_boot_info *bi)
{
	(void)bi;
	serial_puts("Hello from kvmvm tiny guest\n");
	return 0;
}
