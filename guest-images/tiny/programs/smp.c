/*
 * smp: start every other vCPU the way an OS does (INIT, SIPI, SIPI through the local APIC)
 * and have each one report in, so a test can tell that vCPUs beyond the first really run.
 *
 * The application processors begin in real mode at TRAMP_GPA (the SIPI vector is its page
 * number): the trampoline below is copied there, loads its own GDT, goes to 32-bit protected
 * mode, turns on paging with the crt's identity page tables and long mode, and jumps to
 * ap_entry64, which takes a stack and calls ap_main. `smp N` expects N vCPUs in all and
 * prints "smp: N cpus up" (or fails after a timeout, printing how many came).
 */
#include "tiny.h"

#define TRAMP_GPA	0x30000UL	/* free RAM below 1 MiB in kvmvm's and QEMU's layouts */
#define LAPIC_BASE	0xfee00000UL
#define LAPIC_ID	0x020
#define LAPIC_ICR_LO	0x300
#define LAPIC_ICR_HI	0x310
#define ICR_INIT	0x00004500u	/* INIT, level assert */
#define ICR_STARTUP	0x00004600u	/* start-up IPI; vector in bits 0-7 */
#define ICR_BUSY	(1u << 12)
#define MAX_CPUS	8
#define AP_STACK	4096

extern char tramp_start[], tramp_end[];
extern char pml4[];
volatile uint32_t ap_cr3;		/* read by the trampoline (absolute address) */
volatile uint64_t ap_stack_top;	/* the next AP's stack, handed over one at a time */
volatile uint32_t cpus_up = 1;
volatile uint32_t ap_apic_id[MAX_CPUS];
static uint8_t ap_stacks[MAX_CPUS][AP_STACK] __attribute__((aligned(16)));

/* 16-bit entry at TRAMP_GPA: CS = TRAMP_GPA >> 4, IP = 0. Addresses are CS-relative in real
 * mode and TRAMP_GPA-based after that (the code runs from its copy, not from the image). */
__asm__(
	"	.section .rodata.tramp, \"a\"\n"
	"	.globl tramp_start, tramp_end\n"
	"	.code16\n"
	"tramp_start:\n"
	"	cli\n"
	"	cld\n"
	"	lgdtl %cs:(tramp_gdt_desc - tramp_start)\n"
	"	movl %cr0, %eax\n"
	"	orl $1, %eax\n"
	"	movl %eax, %cr0\n"
	"	ljmpl $0x18, $(0x30000 + tramp32 - tramp_start)\n"
	"	.code32\n"
	"tramp32:\n"
	"	movl $0x10, %eax\n"
	"	movl %eax, %ds\n"
	"	movl %eax, %es\n"
	"	movl %eax, %ss\n"
	"	movl %cr4, %eax\n"
	"	orl $0x20, %eax\n"		/* PAE */
	"	movl %eax, %cr4\n"
	"	movl ap_cr3, %eax\n"
	"	movl %eax, %cr3\n"
	"	movl $0xc0000080, %ecx\n"	/* EFER.LME */
	"	rdmsr\n"
	"	orl $0x100, %eax\n"
	"	wrmsr\n"
	"	movl %cr0, %eax\n"
	"	orl $0x80000001, %eax\n"	/* PG | PE */
	"	movl %eax, %cr0\n"
	"	ljmpl $0x08, $ap_entry64\n"
	"	.balign 16\n"
	"tramp_gdt:\n"
	"	.quad 0\n"
	"	.quad 0x00af9a000000ffff\n"	/* 0x08 64-bit code */
	"	.quad 0x00cf92000000ffff\n"	/* 0x10 flat data */
	"	.quad 0x00cf9a000000ffff\n"	/* 0x18 32-bit flat code */
	"tramp_gdt_end:\n"
	"tramp_gdt_desc:\n"
	"	.word tramp_gdt_end - tramp_gdt - 1\n"
	"	.long 0x30000 + tramp_gdt - tramp_start\n"
	"tramp_end:\n"
	"	.code64\n"
	"	.text\n"
	"	.globl ap_entry64\n"
	"ap_entry64:\n"
	"	movl $0x10, %eax\n"
	"	movl %eax, %ds\n"
	"	movl %eax, %es\n"
	"	movl %eax, %ss\n"
	"	movq ap_stack_top, %rsp\n"
	"	xorl %ebp, %ebp\n"
	"	call ap_main\n"
	"1:	cli\n"
	"	hlt\n"
	"	jmp 1b\n");

static inline uint32_t lapic_read(uint32_t reg)
{
	return *(volatile uint32_t *)(LAPIC_BASE + reg);
}

static inline void lapic_write(uint32_t reg, uint32_t v)
{
	*(volatile uint32_t *)(LAPIC_BASE + reg) = v;
}

void ap_main(void);
void ap_main(void)
{
	uint32_t me = __atomic_load_n(&cpus_up, __ATOMIC_SEQ_CST);

	ap_apic_id[me] = lapic_read(LAPIC_ID) >> 24;
	__atomic_store_n(&cpus_up, me + 1, __ATOMIC_SEQ_CST);
}

static void send_ipi(uint32_t apic_id, uint32_t icr)
{
	lapic_write(LAPIC_ICR_HI, apic_id << 24);
	lapic_write(LAPIC_ICR_LO, icr);
	for (int i = 0; i < 100000 && (lapic_read(LAPIC_ICR_LO) & ICR_BUSY); i++)
		;
}

/* Up to ~2^32 TSC ticks (1-4 s at 1-4 GHz), however fast this vCPU runs (emulated or not) */
static int wait_up(uint32_t n)
{
	uint64_t t0 = rdtsc();

	while (rdtsc() - t0 < (1ULL << 32))
		if (__atomic_load_n(&cpus_up, __ATOMIC_SEQ_CST) >= n)
			return 0;
	return -1;
}

int main(const struct tiny_boot_info *bi)
{
	char arg[16];
	unsigned long want = 2;

	if (!cmdline_arg(bi->cmdline, 0, arg, sizeof(arg)))
		parse_ulong(arg, &want);
	if (want < 1 || want > MAX_CPUS)
		want = 2;
	memcpy((void *)TRAMP_GPA, tramp_start, (size_t)(tramp_end - tramp_start));
	ap_cr3 = (uint32_t)(uintptr_t)pml4;
	printf("smp: bsp apic %u\n", lapic_read(LAPIC_ID) >> 24);
	/* one AP at a time: each gets its own stack, and the count orders their reports */
	for (uint32_t id = 1; id < want; id++) {
		ap_stack_top = (uint64_t)(uintptr_t)&ap_stacks[id][AP_STACK];
		send_ipi(id, ICR_INIT);
		send_ipi(id, ICR_STARTUP | (TRAMP_GPA >> 12));
		if (wait_up(id + 1)) {
			send_ipi(id, ICR_STARTUP | (TRAMP_GPA >> 12));	/* the spec's second SIPI */
			if (wait_up(id + 1)) {
				printf("smp: cpu with apic id %u did not start (%u up)\n", id, cpus_up);
				return 1;
			}
		}
		printf("smp: ap %u up (apic id %u)\n", id, ap_apic_id[id]);
	}
	printf("smp: %u cpus up\n", cpus_up);
	return 0;
}
