/* echo: console input test. Enables the UART FIFO and receive interrupt (as Linux 8250 driver
   does when a tty opens; kvmvm delivers host input from then on), then copies input to
   output (polling LSR) until Ctrl-D (end of piped input) and prints the byte count. */
#include "tiny.h"

int main(const struct tiny_boot_info *bi)
{
	(void)bi;
	unsigned long n = 0;
	outb(0x3fa, 0x01);			/* FCR: FIFO on */
	outb(0x3fa, 0x01);			/* FCR: FIFO on */
	outb(0x3f9, 0x01);			/* IER: receive data available */
	serial_puts("echo: ready\n");
	for (;;) {
		if (!(inb(0x3fd) & 0x01))
			continue;
		char c = (char)inb(0x3f8);
		if (c == 0x04)
			break;
		serial_putc(c);
		n++;
	}
	printf("echo: %lu bytes\n", n);
	return 0;
}
