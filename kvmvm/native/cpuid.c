/*
 * CPUID: start from what KVM supports and give every vCPU a consistent topology
 * (one socket, one thread per core, APIC ID = vCPU index).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include "internal.h"

#define CPUID_MAX_ENTRIES 256

static int ceil_log2(int n)
{
    int s = 0;
    while ((1 << s) < n)
        s++;
    return s;
}

/* Pure: shape n entries for vCPU vcpu_id of ncpus. Returns n. */
int kvmvm_cpuid_shape(struct kvmvm_cpuid_entry *e, int n, int vcpu_id, int ncpus)
{
    if (ncpus < 1 || vcpu_id < 0 || vcpu_id >= ncpus)
        return -EINVAL;
    for (int i = 0; i < n; i++) {
        struct kvmvm_cpuid_entry *c = &e[i];
        switch (c->function) {
        case 1:
            c->ebx = (c->ebx & 0x0000ffffu) | ((uint32_t)vcpu_id << 24) | ((uint32_t)ncpus << 16);
            if (ncpus > 1)
                c->edx |= 1u << 28;     /* HTT: the count field above is valid */
            else
                c->edx &= ~(1u << 28);
            c->ecx |= 1u << 31;         /* running under a hypervisor */
            break;
        case 4: {
            uint32_t level = (c->eax >> 5) & 7;
            uint32_t sharing = level >= 3 ? (uint32_t)ncpus - 1 : 0;
            c->eax &= 0x3fffu;
            if (c->eax & 0x1f)          /* a real cache entry, not the terminator */
                c->eax |= ((uint32_t)(ncpus - 1) << 26) | (sharing << 14);
            break;
        }
        case 0xb:
        case 0x1f:
            c->edx = (uint32_t)vcpu_id;
            if (c->index == 0) {
                c->eax = 0;             /* one thread per core */
                c->ebx = 1;
                c->ecx = (1u << 8) | 0;
            } else if (c->index == 1) {
                c->eax = (uint32_t)ceil_log2(ncpus);
                c->ebx = (uint32_t)ncpus;
                c->ecx = (2u << 8) | 1;
            } else {
                c->eax = c->ebx = 0;
                c->ecx = c->index & 0xff;
            }
            break;
        case 0xa:                       /* no PMU */
            c->eax = c->ebx = c->ecx = c->edx = 0;
            break;
        case 0x80000008:
            c->ecx = (c->ecx & ~0xffu) | (uint32_t)(ncpus - 1);
            break;
        case 0x8000001e:
            c->eax = (uint32_t)vcpu_id;
            c->ebx = (c->ebx & ~0xffffu) | (uint32_t)vcpu_id;
            c->ecx &= ~0xffu;
            break;
        }
    }
    return n;
}

/* KVM_GET_SUPPORTED_CPUID answers the same for a given KVM device for the life of the
   process: asked once per device, then copied (a VM per few ms in the in-process API) */
static pthread_mutex_t supported_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kvm_cpuid2 *supported;
static dev_t supported_dev;

static struct kvm_cpuid2 *get_supported(struct kvmvm_vm *vm)
{
    size_t sz = sizeof(struct kvm_cpuid2) + CPUID_MAX_ENTRIES * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *c = calloc(1, sz);
    struct stat st;
    int cacheable = fstat(vm->kvm_fd, &st) == 0;

    if (!c)
        return NULL;
    pthread_mutex_lock(&supported_lock);
    if (cacheable && supported && supported_dev == st.st_rdev) {
        memcpy(c, supported, sz);
        pthread_mutex_unlock(&supported_lock);
        return c;
    }
    c->nent = CPUID_MAX_ENTRIES;
    if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) < 0) {
        int e = errno;
        pthread_mutex_unlock(&supported_lock);
        free(c);
        errno = e;
        return NULL;
    }
    if (cacheable && (supported || (supported = malloc(sz)))) {
        memcpy(supported, c, sz);
        supported_dev = st.st_rdev;
    }
    pthread_mutex_unlock(&supported_lock);
    return c;
}

int kvmvm_vm_supported_cpuid(kvmvm_vm *vm, struct kvmvm_cpuid_entry *out, int max)
{
    struct kvm_cpuid2 *c = get_supported(vm);
    if (!c)
        return -errno ? -errno : -ENOMEM;
    int n = (int)c->nent < max ? (int)c->nent : max;
    for (int i = 0; i < n; i++) {
        struct kvm_cpuid_entry2 *k = &c->entries[i];
        out[i] = (struct kvmvm_cpuid_entry){ k->function, k->index, k->flags,
                                             k->eax, k->ebx, k->ecx, k->edx };
    }
    free(c);
    return n;
}

int vcpu_setup_cpuid(struct kvmvm_vm *vm, struct vcpu *v)
{
    struct kvm_cpuid2 *c = get_supported(vm);
    if (!c)
        return errno ? -errno : -ENOMEM;
    struct kvmvm_cpuid_entry e[CPUID_MAX_ENTRIES];
    int n = (int)c->nent;
    for (int i = 0; i < n; i++) {
        struct kvm_cpuid_entry2 *k = &c->entries[i];
        e[i] = (struct kvmvm_cpuid_entry){ k->function, k->index, k->flags,
                                           k->eax, k->ebx, k->ecx, k->edx };
    }
    kvmvm_cpuid_shape(e, n, v->id, vm->nr_vcpus_planned ? vm->nr_vcpus_planned : 1);
    for (int i = 0; i < n; i++) {
        struct kvm_cpuid_entry2 *k = &c->entries[i];
        k->eax = e[i].eax; k->ebx = e[i].ebx; k->ecx = e[i].ecx; k->edx = e[i].edx;
    }
    int rc = ioctl(v->fd, KVM_SET_CPUID2, c) < 0 ? -errno : 0;
    free(c);
    return rc;
}
