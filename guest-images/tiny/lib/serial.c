/* COM1 16550 output, polled. No init: the VMM's UART needs none. */
#include "tiny.h"

#define UART_THR	0
#define UART_LSR	5
#define LSR_THRE	0x20
#define THRE_SPINS	100000	/* give up waiting if there is no UART at all */

void serial_putc(char c)
{
	unsigned int spins = 0;

	while (!(inb(COM1_PORT + UART_LSR) & LSR_THRE) && ++spins < THRE_SPINS)
		cpu_relax();
	outb(COM1_PORT + UART_THR, (uint8_t)c);
}

void serial_write(const char *s, size_t n)
{
	while (n--)
		serial_putc(*s++);
}

void serial_puts(const char *s)
{
	while (*s)
		serial_putc(*s++);
}
