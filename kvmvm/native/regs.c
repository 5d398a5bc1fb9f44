/*
 * vCPU register state at boot: segments and GDT, control registers, identity page
 * tables for 64-bit entry, MSRs, FPU and LAPIC LINT pins.
 */
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>

#include "internal.h"

/* GDT as the Linux boot protocol wants it: 0x10 code, 0x18 data, 0x20 TSS */
#define GDT_CODE 2
#define GDT_DATA 3
#define GDT_TSS  4
#define GDT_ENTRIES 5

static uint64_t gdt_entry(uint16_t flags, uint32_t base, uint32_t limit)
{
    return ((uint64_t)(base & 0xff000000u) << 32) | ((uint64_t)(flags & 0xf0ffu) << 40) |
           ((uint64_t)(limit & 0x000f0000u) << 32) | ((uint64_t)(base & 0x00ffffffu) << 16) |
           (uint64_t)(limit & 0x0000ffffu);
}

static struct kvm_segment segment_from(uint64_t e, int index)
{
    uint32_t limit = (uint32_t)((e & 0xffff) | ((e >> 32) & 0xf0000));
    struct kvm_segment s = {
        .base = (uint32_t)(((e >> 16) & 0xffffff) | ((e >> 32) & 0xff000000u)),
        .selector = (uint16_t)(index * 8),
        .type = (e >> 40) & 0xf,
        .s = (e >> 44) & 1,
        .dpl = (e >> 45) & 3,
        .present = (e >> 47) & 1,
        .avl = (e >> 52) & 1,
        .l = (e >> 53) & 1,
        .db = (e >> 54) & 1,
        .g = (e >> 55) & 1,
    };
    s.limit = s.g ? (limit << 12) | 0xfff : limit;
    s.unusable = !s.present;
    return s;
}

static int write_page_tables(struct kvmvm_vm *vm, uint64_t pml4)
{
    /* PML4 -> one PDPT -> four PDs of 2 MiB pages: the first 4 GiB, identity mapped */
    uint64_t pdpt = pml4 + 0x1000, pd = pml4 + 0x2000;
    uint64_t e = pdpt | 3;
    if (kvmvm_gmem_write(&vm->mem, pml4, &e, 8) < 0)
        return -EFAULT;
    for (int i = 0; i < 4; i++) {
        e = (pd + i * 0x1000ULL) | 3;
        if (kvmvm_gmem_write(&vm->mem, pdpt + i * 8, &e, 8) < 0)
            return -EFAULT;
    }
    uint64_t *pde = gmem_ptr(&vm->mem, pd, 4 * 0x1000);
    if (!pde)
        return -EFAULT;
    for (uint64_t i = 0; i < 4 * 512; i++)
        pde[i] = (i << 21) | 0x83;   /* present, writable, 2 MiB page */
    return 0;
}

int vcpu_setup_boot(struct kvmvm_vm *vm, struct vcpu *v, const struct kvmvm_boot_regs *r)
{
    int long64 = r->mode == KVMVM_MODE_LONG64;
    if (r->mode != KVMVM_MODE_LONG64 && r->mode != KVMVM_MODE_PROTECTED32)
        return -EINVAL;

    uint64_t gdt[GDT_ENTRIES] = {
        [GDT_CODE] = gdt_entry(long64 ? 0xa09b : 0xc09b, 0, 0xfffff),
        [GDT_DATA] = gdt_entry(0xc093, 0, 0xfffff),
        [GDT_TSS] = gdt_entry(0x808b, 0, 0xfffff),
    };
    if (kvmvm_gmem_write(&vm->mem, r->gdt_gpa, gdt, sizeof(gdt)) < 0)
        return -EFAULT;

    struct kvm_sregs sregs;
    if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
        return -errno;
    struct kvm_segment code = segment_from(gdt[GDT_CODE], GDT_CODE);
    struct kvm_segment data = segment_from(gdt[GDT_DATA], GDT_DATA);
    struct kvm_segment tss = segment_from(gdt[GDT_TSS], GDT_TSS);
    sregs.cs = code;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    sregs.tr = tss;
    sregs.gdt.base = r->gdt_gpa;
    sregs.gdt.limit = sizeof(gdt) - 1;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = 0x11;               /* PE | ET; caching on */
    sregs.cr4 = 0;
    sregs.efer = 0;
    if (long64) {
        int rc = write_page_tables(vm, r->pml4_gpa);
        if (rc < 0)
            return rc;
        sregs.cr3 = r->pml4_gpa;
        sregs.cr4 = 0x20;           /* PAE */
        sregs.cr0 |= 0x80000000u;   /* PG */
        sregs.efer = 0x500;         /* LME | LMA */
    }
    if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
        return -errno;

    struct kvm_regs regs;
    memset(&regs, 0, sizeof(regs));
    regs.rflags = 2;
    regs.rip = r->rip;
    regs.rsp = r->rsp;
    regs.rbp = r->rsp;
    regs.rsi = r->rsi;
    regs.rbx = r->rbx;
    if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
        return -errno;
    return 0;
}

static const struct { uint32_t index; uint64_t value; } boot_msrs[] = {
    { 0x174, 0 },                   /* SYSENTER_CS */
    { 0x175, 0 },                   /* SYSENTER_ESP */
    { 0x176, 0 },                   /* SYSENTER_EIP */
    { 0xc0000081, 0 },              /* STAR */
    { 0xc0000082, 0 },              /* LSTAR */
    { 0xc0000083, 0 },              /* CSTAR */
    { 0xc0000084, 0 },              /* SYSCALL_MASK */
    { 0xc0000102, 0 },              /* KERNEL_GS_BASE */
    { 0x10, 0 },                    /* TSC */
    { 0x1a0, 1 },                   /* MISC_ENABLE: fast strings */
    { 0x2ff, (1 << 11) | 6 },       /* MTRRdefType: enabled, write-back */
};

/* MSRs, FPU and LAPIC pins shared by every vCPU; an MSR this host refuses is skipped */
int vcpu_setup_common(struct kvmvm_vm *vm, struct vcpu *v)
{
    struct {
        struct kvm_msrs hdr;
        struct kvm_msr_entry e[1];
    } m;
    for (size_t i = 0; i < sizeof(boot_msrs) / sizeof(boot_msrs[0]); i++) {
        memset(&m, 0, sizeof(m));
        m.hdr.nmsrs = 1;
        m.e[0].index = boot_msrs[i].index;
        m.e[0].data = boot_msrs[i].value;
        ioctl(v->fd, KVM_SET_MSRS, &m);
    }

    struct kvm_fpu fpu;
    memset(&fpu, 0, sizeof(fpu));
    fpu.fcw = 0x37f;
    fpu.mxcsr = 0x1f80;
    if (ioctl(v->fd, KVM_SET_FPU, &fpu) < 0)
        return -errno;

    if (vm->caps.irqchip) {
        struct kvm_lapic_state lapic;
        if (ioctl(v->fd, KVM_GET_LAPIC, &lapic) < 0)
            return -errno;
        uint32_t *lint0 = (uint32_t *)&lapic.regs[0x350];
        uint32_t *lint1 = (uint32_t *)&lapic.regs[0x360];
        *lint0 = (*lint0 & ~0x700u) | (7u << 8);   /* ExtINT */
        *lint1 = (*lint1 & ~0x700u) | (4u << 8);   /* NMI */
        if (ioctl(v->fd, KVM_SET_LAPIC, &lapic) < 0)
            return -errno;
    }
    return 0;
}
