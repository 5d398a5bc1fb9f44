/*
 * probe: report what the guest sees, one item per line:
 *   mem: <KiB of type-1 RAM>
 *   entry: pvh | 64
 *   cmdline: <cmdline>
 *   mmio-unmapped: 0x<32-bit read of 0xd0f00000>
 *   pyport-read: 0x<byte>        (only with pyport=P: writes 'k','v','m' to P, reads 1 byte)
 */
#include "tiny.h"

#define PROBE_UNMAPPED_MMIO	0xd0f00000ull

int main(const struct tiny_boot_info *bi)
{
	char val[32];
	unsigned long port;

	printf("mem: %lu\n", (unsigned long)(tiny_usable_ram(bi) >> 10));
	printf("entry: %s\n", bi->entry == TINY_ENTRY_PVH ? "pvh" : "64");
	printf("cmdline: %s\n", bi->cmdline);
	printf("mmio-unmapped: 0x%x\n", mmio_read32(PROBE_UNMAPPED_MMIO));
	if (!cmdline_get(bi->cmdline, "pyport", val, sizeof(val))) {
		if (parse_ulong(val, &port) || port > 0xffff) {
			printf("pyport: bad value '%s'\n", val);
			return 1;
		}
		outb((uint16_t)port, 'k');
		outb((uint16_t)port, 'v');
		outb((uint16_t)port, 'm');
		printf("pyport-read: 0x%x\n", inb((uint16_t)port));
	}
	return 0;
}
