/*
 * counter: the snapshot/restore/fork test guest. Counts forever, printing "tick <n>" every
 * <delay> loop iterations; echoes console input as "input <c>" (FIFO and RX interrupt on,
 * as echo.c), and prints "gen <hex>" whenever the 16-byte VM generation ID at <genid>
 * changes (a fork or restore gives a new one). Ends on Ctrl-D with "counter: end <n>".
 * Arguments: delay=<n> (default 100000) genid=<addr> (default 0xff000)
 *            touch=<MiB>: first fill that much memory from 4 MiB up (pages for sharing tests),
 *            and check it all again after each new generation ID ("counter: verified <MiB>")
 */
#include "tiny.h"

#define TOUCH_BASE	(4ul << 20)
#define TOUCH_WORD	0x6b766d766dul

/* 1 if all of [TOUCH_BASE, +mib MiB) still holds TOUCH_WORD (one string instruction) */
static int touched_intact(unsigned long mib)
{
	void *p = (void *)TOUCH_BASE;
	unsigned long n = mib << 17;
	unsigned char eq;

	if (!n)
		return 1;
	__asm__ volatile("cld; repe scasq; sete %2" : "+D"(p), "+c"(n), "=q"(eq) : "a"(TOUCH_WORD) : "memory", "cc");
	return eq && n == 0;
}

static uint64_t read_gen(volatile uint64_t *g)
{
	return g[0] ^ g[1];
}

int main(const struct tiny_boot_info *bi)
{
	char arg[32];
	unsigned long delay = 100000, genid = 0xff000, n = 0, mib = 0;

	if (cmdline_get(bi->cmdline, "delay", arg, sizeof(arg)) == 0)
		parse_ulong(arg, &delay);
	if (cmdline_get(bi->cmdline, "genid", arg, sizeof(arg)) == 0)
		parse_ulong(arg, &genid);
	if (cmdline_get(bi->cmdline, "touch", arg, sizeof(arg)) == 0) {
		unsigned long qwords;
		void *dst = (void *)TOUCH_BASE;
		parse_ulong(arg, &mib);
		qwords = mib << 17;
		/* one string instruction: cheap even where CPL0 code is emulated */
		__asm__ volatile("rep stosq" : "+D"(dst), "+c"(qwords) : "a"(TOUCH_WORD) : "memory");
		printf("counter: touched %lu MiB\n", mib);
	}
	volatile uint64_t *gen = (volatile uint64_t *)genid;
	uint64_t last = read_gen(gen);
	outb(0x3fa, 0x01);			/* FCR: FIFO on */
	outb(0x3f9, 0x01);			/* IER: receive data available */
	printf("counter: ready gen %lx\n", (unsigned long)last);
	for (;;) {
		for (volatile unsigned long i = 0; i < delay; i++)
			;
		n++;
		printf("tick %lu\n", n);
		uint64_t g = read_gen(gen);
		if (g != last) {
			last = g;
			printf("gen %lx\n", (unsigned long)g);
			if (mib) {
				if (!touched_intact(mib))
					panic("touched memory differs after a new generation");
				printf("counter: verified %lu MiB\n", mib);
			}
		}
		while (inb(0x3fd) & 0x01) {
			char c = (char)inb(0x3f8);
			if (c == 0x04) {
				printf("counter: end %lu\n", n);
				return 0;
			}
			printf("input %c\n", c);
		}
	}
}
