/* kbd: signals the boot timer as a guest's init does (123 at 0xd0000000, Firecracker's
   convention), then waits for Ctrl+Alt+Del on the i8042 keyboard (scancode set 2, as Firecracker's
   SendCtrlAltDel sends it), polling the controller's status port, then debug-exits 0x2a
   (host status 85). Every other byte read is counted and printed at the end. */
#include "tiny.h"

#define I8042_DATA	0x60
#define I8042_STATUS	0x64
#define OBF		0x01

int main(const struct tiny_boot_info *bi)
{
	(void)bi;
	/* make codes: Ctrl 0x14, Alt 0x11, Del 0xe0 0x71 */
	static const uint8_t want[] = { 0x14, 0x11, 0xe0, 0x71 };
	unsigned int seen = 0, other = 0;

	*(volatile uint8_t *)0xd0000000ul = 123;
	serial_puts("kbd: waiting for ctrl-alt-del\n");
	while (seen < sizeof(want)) {
		if (!(inb(I8042_STATUS) & OBF)) {
			for (volatile int i = 0; i < 2000; i++)
				;
			continue;
		}
		uint8_t b = inb(I8042_DATA);
		if (b == want[seen])
			seen++;
		else if (b != 0xf0 && b != 0xe0)
			other++;
	}
	printf("kbd: ctrl-alt-del (%u other bytes)\n", other);
	debug_exit(0x2a);
}
