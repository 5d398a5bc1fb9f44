/*
 * Entry code for tiny guests. One ELF, two ways in:
 *
 *  - PVH (XEN_ELFNOTE_PHYS32_ENTRY): pvh_start32, 32-bit flat protected mode,
 *    paging off, %ebx = physical address of struct hvm_start_info.
 *  - 64-bit (ELF e_entry): _start64, long mode with the loader's identity
 *    page tables (>= first 4 GiB), %rsi = physical address of boot_params.
 *
 * Both load our GDT, set up a stack, zero .bss and call
 * tiny_boot(raw_boot_data, TINY_ENTRY_*), which never returns.
 *
 * Everything here runs at CPL0, which the PVM hypervisor emulates one
 * instruction at a time, so the page tables are built at link time (in
 * .data) rather than by a loop at boot.
 */
#include "tiny/boot.h"

#define SEL_CODE64	0x08
#define SEL_DATA	0x10

#define MSR_EFER	0xc0000080
#define EFER_LME	(1 << 8)
#define CR0_PE		(1 << 0)
#define CR0_PG		(1 << 31)
#define CR4_PAE		(1 << 5)

#define PTE_P		0x001
#define PTE_W		0x002
#define PTE_PS		0x080

/* ------------------------------------------------------------------ */
	.section .note.Xen, "a", @note
	.balign 4
	.long 4				/* namesz: "Xen\0" */
	.long 8				/* descsz */
	.long 18			/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.quad pvh_start32		/* 8 bytes, like Linux: QEMU reads a u64 */
	.balign 4

/* ------------------------------------------------------------------ */
	.section .text.entry, "ax"

	.code64
	.globl _start64
	.type _start64, @function
_start64:
	cli
	cld
	movq %rsi, %rdi			/* boot_params, first argument */
	movq $__stack_top, %rsp		/* rsp is undefined on entry; lretq needs a stack */
	lgdt gdt_desc(%rip)
	/* Reload CS from our GDT so the loader's GDT may be reused as RAM. */
	pushq $SEL_CODE64
	leaq 1f(%rip), %rax
	pushq %rax
	lretq
1:	movl $TINY_ENTRY_64, %esi
	jmp common64
	.size _start64, . - _start64

	.code32
	.globl pvh_start32
	.type pvh_start32, @function
pvh_start32:
	cli
	cld
	movl %ebx, %edi			/* hvm_start_info, kept until tiny_boot */
	lgdt gdt_desc			/* 32-bit lgdt reads limit + low 32 bits of base */
	movl $SEL_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss

	movl %cr4, %eax
	orl $CR4_PAE, %eax
	movl %eax, %cr4

	movl $pml4, %eax
	movl %eax, %cr3

	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr

	movl %cr0, %eax
	orl $(CR0_PG | CR0_PE), %eax
	movl %eax, %cr0

	ljmp $SEL_CODE64, $pvh_start64
	.size pvh_start32, . - pvh_start32

	.code64
pvh_start64:
	movl %edi, %edi			/* zero-extend the start_info address */
	movl $TINY_ENTRY_PVH, %esi

	/* %rdi = raw boot data, %esi = entry kind */
common64:
	movl $SEL_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	xorl %eax, %eax
	movl %eax, %fs
	movl %eax, %gs
	movq $__stack_top, %rsp

	/* Zero .bss (one emulated instruction; rdi/rsi saved around it). */
	movq %rdi, %r8
	movq %rsi, %r9
	movq $__bss_start, %rdi
	movq $__bss_end, %rcx
	subq %rdi, %rcx
	shrq $3, %rcx
	xorl %eax, %eax
	rep stosq
	movq %r8, %rdi
	movq %r9, %rsi

	xorl %ebp, %ebp
	call tiny_boot
2:	cli
	hlt
	jmp 2b

/* ------------------------------------------------------------------ */
	.section .rodata
	.balign 16
gdt:
	.quad 0				/* 0x00 null */
	.quad 0x00af9a000000ffff	/* 0x08 64-bit code, DPL0 */
	.quad 0x00cf92000000ffff	/* 0x10 flat data, DPL0 */
	.quad 0x00cf9a000000ffff	/* 0x18 32-bit flat code (unused, for completeness) */
gdt_end:

	.balign 16
	.globl gdt_desc
gdt_desc:
	.word gdt_end - gdt - 1
	.quad gdt

/*
 * Identity map of the first 4 GiB with 2 MiB pages: one PML4, one PDPT,
 * four page directories. Used by the PVH path only; the 64-bit path keeps
 * the loader's tables.
 */
	.section .data.pgtables, "aw"
	.balign 4096
	.globl pml4
pml4:
	.quad pdpt + (PTE_P | PTE_W)
	.fill 511, 8, 0
pdpt:
	.quad pd + 0x0000 + (PTE_P | PTE_W)
	.quad pd + 0x1000 + (PTE_P | PTE_W)
	.quad pd + 0x2000 + (PTE_P | PTE_W)
	.quad pd + 0x3000 + (PTE_P | PTE_W)
	.fill 508, 8, 0
pd:
	.set i, 0
	.rept 2048
	.quad (i << 21) | (PTE_P | PTE_W | PTE_PS)
	.set i, i + 1
	.endr
