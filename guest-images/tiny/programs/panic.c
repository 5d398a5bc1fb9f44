/* panic: report a guest kernel panic through pvpanic (port 0x505, bit 0), as Linux does
 * with panic=-1 and a pvpanic device, then idle; kvmvm ends the VM with status 3. */
#include "tiny.h"

#define PVPANIC_PORT 0x505
#define PVPANIC_PANICKED 1

int main(const struct tiny_boot_info *bi)
{
	(void)bi;
	printf("panic: supported=%x\n", inb(PVPANIC_PORT));
	outb(PVPANIC_PORT, PVPANIC_PANICKED);
	halt_forever();
}
