/*
 * Application processors: start vCPUs 1..n-1 the way an OS does (INIT, SIPI, SIPI through
 * the local APIC). Each AP enters at a real-mode trampoline copied to SMP_TRAMP_GPA, goes
 * to long mode with the crt's page tables, records its APIC ID, counts itself up and calls
 * the function given to smp_init (if any) on its own stack; when that returns it halts.
 */
#ifndef TINY_SMP_H
#define TINY_SMP_H

#include <stdint.h>

#define SMP_MAX_CPUS	8
#define SMP_TRAMP_GPA	0x30000UL	/* free RAM below 1 MiB in kvmvm's and QEMU's layouts */

/* APIC ID of each started CPU, by the order it came up (index 0: the BSP) */
extern volatile uint32_t smp_apic_id[SMP_MAX_CPUS];

/* Copy the trampoline; fn(index) is what every AP runs once up (NULL: halt at once). */
void smp_init(void (*fn)(uint32_t cpu));
/* Start the CPU with that APIC ID; waits up to ~2^32 TSC ticks (the SIPI is sent twice).
 * 0 when it came up, -1 if not. */
int smp_start(uint32_t apic_id);
/* How many CPUs run (the BSP included). */
uint32_t smp_cpus_up(void);
/* This CPU's local APIC ID. */
uint32_t smp_my_apic_id(void);

#endif
