/* Boot information, normalized from PVH hvm_start_info or Linux boot_params. */
#ifndef TINY_BOOT_H
#define TINY_BOOT_H

#define TINY_ENTRY_PVH	1	/* came in through the PVH 32-bit entry */
#define TINY_ENTRY_64	2	/* came in through the ELF 64-bit e_entry */

#ifndef __ASSEMBLER__
#include <stdint.h>

#define TINY_MAX_MEM		64
#define TINY_CMDLINE_MAX	2048
#define TINY_CMDLINE_TOKEN_MAX	256

/* E820 / hvm_memmap_table_entry types. */
#define TINY_MEM_RAM		1
#define TINY_MEM_RESERVED	2
#define TINY_MEM_ACPI		3
#define TINY_MEM_NVS		4
#define TINY_MEM_UNUSABLE	5

struct tiny_mem_region {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
};

struct tiny_boot_info {
	int entry;			/* TINY_ENTRY_PVH or TINY_ENTRY_64 */
	uint64_t boot_data;		/* paddr of hvm_start_info / boot_params */
	const char *cmdline;		/* never NULL; "" when there is none */
	unsigned int nr_mem;
	struct tiny_mem_region mem[TINY_MAX_MEM];
};

/* Filled by the crt before main(); copies, so the originals may be reused. */
extern struct tiny_boot_info tiny_boot_info;

/*
 * The program's entry point. Returning 0 ends the VM with success
 * (tiny_success()); any other value v ends it through debug-exit (host
 * status (v << 1) | 1).
 */
int main(const struct tiny_boot_info *bi);

/* Sum of the sizes of all RAM (type 1) regions, in bytes. */
uint64_t tiny_usable_ram(const struct tiny_boot_info *bi);

#endif /* __ASSEMBLER__ */
#endif
