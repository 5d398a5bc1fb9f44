/* Starting application processors: see include/tiny/smp.h. */
#include "tiny.h"
#include "tiny/smp.h"

#define LAPIC_BASE	0xfee00000UL
#define LAPIC_ID	0x020
#define LAPIC_ICR_LO	0x300
#define LAPIC_ICR_HI	0x310
#define ICR_INIT	0x00004500u	/* INIT, level assert */
#define ICR_STARTUP	0x00004600u	/* start-up IPI; vector in bits 0-7 */
#define ICR_BUSY	(1u << 12)
#define AP_STACK	8192

extern char tramp_start[], tramp_end[];
extern char pml4[];
volatile uint32_t ap_cr3;		/* read by the trampoline (absolute address) */
volatile uint64_t ap_stack_top;	/* the next AP's stack, handed over one at a time */
static volatile uint32_t cpus_up = 1;
volatile uint32_t smp_apic_id[SMP_MAX_CPUS];
static void (*ap_fn)(uint32_t cpu);
static uint8_t ap_stacks[SMP_MAX_CPUS][AP_STACK] __attribute__((aligned(16)));

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

	smp_apic_id[me] = lapic_read(LAPIC_ID) >> 24;
	__atomic_store_n(&cpus_up, me + 1, __ATOMIC_SEQ_CST);
	if (ap_fn)
		ap_fn(me);
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

void smp_init(void (*fn)(uint32_t cpu))
{
	memcpy((void *)SMP_TRAMP_GPA, tramp_start, (size_t)(tramp_end - tramp_start));
	ap_cr3 = (uint32_t)(uintptr_t)pml4;
	ap_fn = fn;
	smp_apic_id[0] = smp_my_apic_id();
}

/* one AP at a time: each gets its own stack, and the count orders their reports */
int smp_start(uint32_t apic_id)
{
	uint32_t n = smp_cpus_up();

	if (n >= SMP_MAX_CPUS)
		return -1;
	ap_stack_top = (uint64_t)(uintptr_t)&ap_stacks[n][AP_STACK];
	send_ipi(apic_id, ICR_INIT);
	send_ipi(apic_id, ICR_STARTUP | (SMP_TRAMP_GPA >> 12));
	if (wait_up(n + 1) == 0)
		return 0;
	send_ipi(apic_id, ICR_STARTUP | (SMP_TRAMP_GPA >> 12));	/* the spec's second SIPI */
	return wait_up(n + 1);
}

uint32_t smp_cpus_up(void)
{
	return __atomic_load_n(&cpus_up, __ATOMIC_SEQ_CST);
}

uint32_t smp_my_apic_id(void)
{
	return lapic_read(LAPIC_ID) >> 24;
}
