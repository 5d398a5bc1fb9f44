/*
 * smp: start every other vCPU the way an OS does (INIT, SIPI, SIPI through the local APIC;
 * lib/smp.c) and have each one report in, so a test can tell that vCPUs beyond the first
 * really run. `smp N` expects N vCPUs in all and prints "smp: N cpus up" (or fails after
 * a timeout, printing how many came).
 */
#include "tiny.h"
#include "tiny/smp.h"

int main(const struct tiny_boot_info *bi)
{
	char arg[16];
	unsigned long want = 2;

	if (!cmdline_arg(bi->cmdline, 0, arg, sizeof(arg)))
		parse_ulong(arg, &want);
	if (want < 1 || want > SMP_MAX_CPUS)
		want = 2;
	smp_init(0);
	printf("smp: bsp apic %u\n", smp_my_apic_id());
	for (uint32_t id = 1; id < want; id++) {
		if (smp_start(id)) {
			printf("smp: cpu with apic id %u did not start (%u up)\n", id, smp_cpus_up());
			return 1;
		}
		printf("smp: ap %u up (apic id %u)\n", id, smp_apic_id[id]);
	}
	printf("smp: %u cpus up\n", smp_cpus_up());
	return 0;
}
