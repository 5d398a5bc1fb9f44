/*
 * Pause, resume and snapshot state (cffi-visible; no #include, no #ifdef). 0 / -errno.
 * The state is one byte stream of sections (docs/snapshot-format.md): each section is
 * {u32 tag, u32 index, u32 len, u32 version} followed by len bytes padded to 8.
 */
#define KVMVM_SEC_END         0
#define KVMVM_SEC_REGS        1
#define KVMVM_SEC_SREGS       2
#define KVMVM_SEC_FPU         3
#define KVMVM_SEC_XSAVE       4
#define KVMVM_SEC_XCRS        5
#define KVMVM_SEC_MSRS        6
#define KVMVM_SEC_LAPIC       7
#define KVMVM_SEC_EVENTS      8
#define KVMVM_SEC_DEBUGREGS   9
#define KVMVM_SEC_MPSTATE     10
#define KVMVM_SEC_IRQCHIP     32   /* index: 0 PIC master, 1 PIC slave, 2 IOAPIC */
#define KVMVM_SEC_PIT2        33
#define KVMVM_SEC_CLOCK       34
#define KVMVM_SEC_TSC_KHZ     35
#define KVMVM_SEC_SERIAL      64
#define KVMVM_SEC_VIRTIO      65   /* index: the transport's base address (below 4 GiB) */

/* which state ioctls this /dev/kvm answers (0 ok, else -errno of the GET) */
struct kvmvm_state_support {
    int regs, sregs, fpu, xsave, xcrs, msrs, lapic, events, debugregs, mpstate;
    int irqchip, pit2, clock, tsc_khz, immediate_exit;
    int nr_msrs;          /* MSRs in KVM_GET_MSR_INDEX_LIST */
    int nr_msrs_ok;       /* of those, how many KVM_GET_MSRS reads */
};

int kvmvm_vm_state_probe(kvmvm_vm *vm, struct kvmvm_state_support *out);
/* all vCPUs out of KVM_RUN and held, virtio workers parked; timeout in ms */
int kvmvm_vm_pause(kvmvm_vm *vm, int64_t timeout_ms);
int kvmvm_vm_resume(kvmvm_vm *vm);
int kvmvm_vm_paused(kvmvm_vm *vm);
/* the whole CPU/VM/device state of a paused (or not yet started) VM: *out is malloc'd */
int kvmvm_vm_save_state(kvmvm_vm *vm, uint8_t **out, uint64_t *len);
void kvmvm_free(void *p);
/* load into a VM built with the same devices and vCPUs, not yet started. On failure
   *what names the section that failed (a static string). */
int kvmvm_vm_load_state(kvmvm_vm *vm, const uint8_t *buf, uint64_t len, const char **what);
/* KVM_GET_CPUID2 of one vCPU */
int kvmvm_vm_vcpu_cpuid(kvmvm_vm *vm, int vcpu, struct kvmvm_cpuid_entry *out, int max);

/* guest RAM as files: save one region sparsely (only pages present and non-zero; holes
   elsewhere), map a file MAP_PRIVATE as a region, or put a file under a live region */
int kvmvm_vm_save_ram(kvmvm_vm *vm, int slot, int fd, uint64_t *written);
int kvmvm_vm_add_ram_file(kvmvm_vm *vm, uint64_t gpa, uint64_t size, int fd);
int kvmvm_vm_remap_ram_file(kvmvm_vm *vm, int slot, int fd);
int kvmvm_vm_ram_slots(kvmvm_vm *vm);
