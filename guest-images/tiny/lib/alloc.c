/*
 * Bump allocator for driver rings and buffers: hands out zeroed memory
 * from just past the image, inside the RAM region that contains it.
 * Nothing is ever freed.
 */
#include "tiny.h"

static uint64_t next, limit;

static void alloc_init(void)
{
	const struct tiny_boot_info *bi = &tiny_boot_info;
	uint64_t start = (uint64_t)__image_end;
	unsigned int i;

	next = start;
	limit = start;	/* no memory map: nothing to hand out */
	for (i = 0; i < bi->nr_mem; i++) {
		const struct tiny_mem_region *r = &bi->mem[i];

		if (r->type == TINY_MEM_RAM && r->addr <= start &&
		    start < r->addr + r->size) {
			limit = r->addr + r->size;
			break;
		}
	}
	if (limit > 0x100000000ull)	/* only the first 4 GiB is mapped */
		limit = 0x100000000ull;
}

void *tiny_alloc(size_t size, size_t align)
{
	uint64_t p;

	if (!next)
		alloc_init();
	if (!align)
		align = 1;
	p = (next + align - 1) & ~((uint64_t)align - 1);
	if (p < next || p + size < p || p + size > limit)
		return NULL;
	next = p + size;
	memset((void *)p, 0, size);
	return (void *)p;
}
