/*
 * Turn whatever the loader handed us (PVH hvm_start_info or Linux
 * boot_params) into one struct tiny_boot_info, then run main().
 * Everything is copied, so programs may reuse the loader's memory.
 */
#include "tiny.h"

#define MAX_DIRECT_ADDR	0x100000000ull	/* both paths identity-map 4 GiB */

/* struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h) */
#define HVM_START_MAGIC		0x336ec578
#define HVM_OFF_MAGIC		0
#define HVM_OFF_VERSION		4
#define HVM_OFF_CMDLINE		24
#define HVM_OFF_MEMMAP		40
#define HVM_OFF_MEMMAP_NR	48
#define HVM_MEMMAP_ENTRY_SIZE	24

/* struct boot_params (Linux arch/x86/include/uapi/asm/bootparam.h) */
#define BP_OFF_EXT_CMDLINE	0x0c8
#define BP_OFF_E820_NR		0x1e8
#define BP_OFF_CMDLINE		0x228
#define BP_OFF_E820		0x2d0
#define BP_E820_ENTRY_SIZE	20
#define BP_E820_MAX		128

struct tiny_boot_info tiny_boot_info;
static char cmdline_buf[TINY_CMDLINE_MAX];

void tiny_boot(uint64_t raw, int entry) __attribute__((noreturn));

static uint32_t rd32(uint64_t addr)
{
	uint32_t v;

	memcpy(&v, (const void *)addr, sizeof(v));
	return v;
}

static uint64_t rd64(uint64_t addr)
{
	uint64_t v;

	memcpy(&v, (const void *)addr, sizeof(v));
	return v;
}

static void copy_cmdline(uint64_t paddr)
{
	size_t i;

	if (!paddr || paddr >= MAX_DIRECT_ADDR)
		return;
	for (i = 0; i < TINY_CMDLINE_MAX - 1; i++) {
		char c = ((const char *)paddr)[i];

		if (!c)
			break;
		cmdline_buf[i] = c;
	}
	cmdline_buf[i] = '\0';
}

static void add_mem(uint64_t addr, uint64_t size, uint32_t type)
{
	struct tiny_boot_info *bi = &tiny_boot_info;

	if (bi->nr_mem >= TINY_MAX_MEM || !size)
		return;
	bi->mem[bi->nr_mem].addr = addr;
	bi->mem[bi->nr_mem].size = size;
	bi->mem[bi->nr_mem].type = type;
	bi->nr_mem++;
}

static void parse_pvh(uint64_t si)
{
	uint32_t i, nr;
	uint64_t map;

	if (!si || si >= MAX_DIRECT_ADDR || rd32(si + HVM_OFF_MAGIC) != HVM_START_MAGIC)
		return;
	copy_cmdline(rd64(si + HVM_OFF_CMDLINE));
	if (rd32(si + HVM_OFF_VERSION) < 1)
		return;
	map = rd64(si + HVM_OFF_MEMMAP);
	nr = rd32(si + HVM_OFF_MEMMAP_NR);
	if (!map || map >= MAX_DIRECT_ADDR)
		return;
	for (i = 0; i < nr; i++) {
		uint64_t e = map + (uint64_t)i * HVM_MEMMAP_ENTRY_SIZE;

		add_mem(rd64(e), rd64(e + 8), rd32(e + 16));
	}
}

static void parse_boot_params(uint64_t bp)
{
	uint64_t cmdline;
	unsigned int i, nr;

	if (!bp || bp >= MAX_DIRECT_ADDR)
		return;
	cmdline = rd32(bp + BP_OFF_CMDLINE) |
		  ((uint64_t)rd32(bp + BP_OFF_EXT_CMDLINE) << 32);
	copy_cmdline(cmdline);
	nr = ((const uint8_t *)bp)[BP_OFF_E820_NR];
	if (nr > BP_E820_MAX)
		nr = BP_E820_MAX;
	for (i = 0; i < nr; i++) {
		uint64_t e = bp + BP_OFF_E820 + (uint64_t)i * BP_E820_ENTRY_SIZE;

		add_mem(rd64(e), rd64(e + 8), rd32(e + 16));
	}
}

uint64_t tiny_usable_ram(const struct tiny_boot_info *bi)
{
	uint64_t total = 0;
	unsigned int i;

	for (i = 0; i < bi->nr_mem; i++)
		if (bi->mem[i].type == TINY_MEM_RAM)
			total += bi->mem[i].size;
	return total;
}

void tiny_boot(uint64_t raw, int entry)
{
	struct tiny_boot_info *bi = &tiny_boot_info;
	int ret;

	bi->entry = entry;
	bi->boot_data = raw;
	bi->cmdline = cmdline_buf;
	if (entry == TINY_ENTRY_PVH)
		parse_pvh(raw);
	else
		parse_boot_params(raw);

	ret = main(bi);
	if (ret == 0)
		tiny_success();
	debug_exit((uint8_t)ret);
}
