/* Ways to end the VM. Never int3: the PVM emulator stops the VM on it. */
#include "tiny.h"

struct __attribute__((packed)) idt_desc {
	uint16_t limit;
	uint64_t base;
};

void triple_fault(void)
{
	static const struct idt_desc empty = { 0, 0 };

	/* #UD with a zero-limit IDT -> #GP -> #DF -> triple fault (shutdown). */
	__asm__ volatile("cli\n\tlidt %0\n\tud2" : : "m"(empty) : "memory");
	for (;;)
		__asm__ volatile("cli; hlt");
}

void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt" : : : "memory");
}

void tiny_success(void)
{
	outb(I8042_CMD_PORT, 0xfe);	/* kvmvm: clean stop, status 0 */
	triple_fault();			/* QEMU microvm has no i8042; -no-reboot exits 0 */
}

void debug_exit(uint8_t v)
{
	outb(DEBUG_EXIT_PORT, v);
	triple_fault();
}

void panic(const char *fmt, ...)
{
	va_list ap;

	serial_puts("panic: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	serial_putc('\n');
	debug_exit(0x7f);
}
