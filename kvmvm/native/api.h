/*
 * kvmvm C core: the declarations shared by the C sources and the cffi build
 * (cffi parses this file: no #include, no #ifdef, plain integer #defines only).
 * Every function returns 0 or a positive value on success and -errno on failure.
 */

/* why a VM stopped (kvmvm_stop_info.reason) */
#define KVMVM_STOP_NONE            0
#define KVMVM_STOP_DEBUG_EXIT      1   /* guest wrote v to the debug-exit port: code = v */
#define KVMVM_STOP_RESET           2   /* i8042 reset or ACPI reset register */
#define KVMVM_STOP_HALT            3   /* HLT exit (only without an in-kernel irqchip) */
#define KVMVM_STOP_SHUTDOWN        4   /* triple fault (KVM_EXIT_SHUTDOWN) */
#define KVMVM_STOP_FAIL_ENTRY      5   /* code = hardware_entry_failure_reason */
#define KVMVM_STOP_INTERNAL_ERROR  6   /* code = suberror, rip = guest RIP */
#define KVMVM_STOP_TIMEOUT         7   /* the host's --timeout ran out */
#define KVMVM_STOP_ERROR           8   /* a host-side failure: code = errno */
#define KVMVM_STOP_REQUESTED       9   /* the host asked (Ctrl-C, API stop) */
#define KVMVM_STOP_POWEROFF        10  /* ACPI S5 sleep request */
#define KVMVM_STOP_SYSTEM_EVENT    11  /* KVM_EXIT_SYSTEM_EVENT: code = type */
#define KVMVM_STOP_UNKNOWN_EXIT    12  /* an exit reason kvmvm does not handle: code = reason */
#define KVMVM_STOP_PANIC           13  /* guest kernel panicked (pvpanic): code = event bits */

#define KVMVM_BUS_PIO   0
#define KVMVM_BUS_MMIO  1

#define KVMVM_MODE_PROTECTED32 32   /* PVH: flat 32-bit protected mode, paging off */
#define KVMVM_MODE_LONG64      64   /* 64-bit long mode with identity page tables */

#define KVMVM_MAX_VCPUS 64

typedef struct kvmvm_vm kvmvm_vm;
typedef struct kvmvm_gmem kvmvm_gmem;
typedef struct kvmvm_bus kvmvm_bus;

struct kvmvm_stop_info {
    int reason;
    int vcpu;
    uint64_t code;
    uint64_t rip;
    uint64_t data[4];
    uint32_t ndata;
};

struct kvmvm_stats {
    uint64_t exits;
    uint64_t exits_io;
    uint64_t exits_mmio;
    uint64_t exits_intr;
    uint64_t exits_other;
    uint64_t io_unhandled;
    uint64_t mmio_unhandled;
    uint64_t py_calls;
    int64_t t_created_ns;     /* CLOCK_MONOTONIC */
    int64_t t_first_run_ns;
    int64_t t_boot_signal_ns; /* guest wrote the boot-timer register; 0 if never */
    int64_t t_end_ns;
    uint64_t serial_dropped;  /* console bytes dropped because the host fd was not taking them */
};

struct kvmvm_caps {
    int api_version;
    int irqchip;
    int pit2;
    int irqfd;
    int ioeventfd;
    int immediate_exit;
    int max_vcpus;
    int nr_memslots;
};

struct kvmvm_boot_regs {
    int mode;            /* KVMVM_MODE_* */
    uint64_t rip;
    uint64_t rsp;
    uint64_t rsi;
    uint64_t rbx;
    uint64_t gdt_gpa;    /* where the boot GDT is written */
    uint64_t pml4_gpa;   /* LONG64: where identity page tables (PML4, PDPT, 4 PDs) are written */
};

/* one CPUID entry, the same fields as struct kvm_cpuid_entry2 minus padding */
struct kvmvm_cpuid_entry {
    uint32_t function;
    uint32_t index;
    uint32_t flags;
    uint32_t eax;
    uint32_t ebx;
    uint32_t ecx;
    uint32_t edx;
};

/* guest memory (usable without KVM: unit tests build one by hand) */
kvmvm_gmem *kvmvm_gmem_new(void);
void kvmvm_gmem_free(kvmvm_gmem *gm);
int kvmvm_gmem_add(kvmvm_gmem *gm, uint64_t gpa, uint64_t size);
int kvmvm_gmem_read(kvmvm_gmem *gm, uint64_t gpa, void *buf, uint64_t len);
int kvmvm_gmem_write(kvmvm_gmem *gm, uint64_t gpa, const void *buf, uint64_t len);
int kvmvm_gmem_check(kvmvm_gmem *gm, uint64_t gpa, uint64_t len);
int kvmvm_gmem_load_file(kvmvm_gmem *gm, uint64_t gpa, int fd, uint64_t offset, uint64_t len,
                         int map);
uint64_t kvmvm_gmem_guard_size(void);

/* buses (usable without KVM) */
kvmvm_bus *kvmvm_bus_new(void);
void kvmvm_bus_free(kvmvm_bus *bus);
int kvmvm_bus_insert_py(kvmvm_bus *bus, uint64_t base, uint64_t len, uint64_t handle);
int kvmvm_bus_remove(kvmvm_bus *bus, uint64_t base);
int kvmvm_bus_dispatch(kvmvm_bus *bus, uint64_t addr, int is_write, uint8_t *data, uint32_t len);
int kvmvm_bus_count(kvmvm_bus *bus);

/* the VM */
kvmvm_vm *kvmvm_vm_new(const char *dev_path, int *err);
void kvmvm_vm_free(kvmvm_vm *vm);
/* Start creating a VM with its RAM regions (and with pit, a PIT) on a thread of its own,
   so that the kernel's waits (an SRCU grace period per memory slot, milliseconds) overlap
   the caller's start-up; kvmvm_vm_prepared() joins it: the VM (with as many of the regions
   as succeeded: *nr_ram), or NULL and *err. Either way the handle is gone afterwards.
   seccomp_level > 0: the thread also compiles that level's filters meanwhile (about a
   millisecond that kvmvm_vm_set_seccomp would otherwise spend). */
typedef struct kvmvm_prep kvmvm_prep;
kvmvm_prep *kvmvm_vm_prepare(const char *dev_path, const uint64_t *gpa, const uint64_t *size, int n,
                             int pit, int seccomp_level);
kvmvm_vm *kvmvm_vm_prepared(kvmvm_prep *p, int *err, int *nr_ram);
int kvmvm_vm_caps(kvmvm_vm *vm, struct kvmvm_caps *caps);
int kvmvm_vm_add_ram(kvmvm_vm *vm, uint64_t gpa, uint64_t size);
int kvmvm_vm_mem_write(kvmvm_vm *vm, uint64_t gpa, const void *buf, uint64_t len);
int kvmvm_vm_mem_read(kvmvm_vm *vm, uint64_t gpa, void *buf, uint64_t len);
/* file bytes straight into guest memory; map: whole pages mapped copy-on-write (guestmem.c) */
int kvmvm_vm_load_file(kvmvm_vm *vm, uint64_t gpa, int fd, uint64_t offset, uint64_t len, int map);
int kvmvm_vm_create_vcpus(kvmvm_vm *vm, int n);
int kvmvm_vm_boot_regs(kvmvm_vm *vm, int vcpu, const struct kvmvm_boot_regs *r);
int kvmvm_vm_add_py_device(kvmvm_vm *vm, int bus, uint64_t base, uint64_t len, uint64_t handle);
int kvmvm_vm_add_serial(kvmvm_vm *vm, uint16_t port, int irq, int out_fd, int in_fd);
int kvmvm_vm_add_debug_exit(kvmvm_vm *vm, uint16_t port, uint16_t size);
int kvmvm_vm_add_i8042(kvmvm_vm *vm);
/* the in-kernel i8254 PIT (needs the irqchip); a VM has none unless added: destroying
   one costs the VM's teardown an SRCU grace period or two (~15 ms on a busy PVM host) */
int kvmvm_vm_add_pit(kvmvm_vm *vm);
int kvmvm_vm_add_boot_timer(kvmvm_vm *vm, uint64_t gpa);
int kvmvm_vm_add_acpi_pm(kvmvm_vm *vm, uint16_t port);
int kvmvm_vm_add_pvpanic(kvmvm_vm *vm, uint16_t port);
int kvmvm_vm_irq_line(kvmvm_vm *vm, int irq, int level);
int kvmvm_vm_start(kvmvm_vm *vm);
int kvmvm_vm_wait(kvmvm_vm *vm, int64_t timeout_ms, struct kvmvm_stop_info *out);
void kvmvm_vm_stop(kvmvm_vm *vm, int reason, uint64_t code);
int kvmvm_vm_stats(kvmvm_vm *vm, struct kvmvm_stats *st);
int64_t kvmvm_now_ns(void);

/* CPUID: fetch what KVM supports, and shape it for one vCPU of n (pure: testable without KVM) */
int kvmvm_vm_supported_cpuid(kvmvm_vm *vm, struct kvmvm_cpuid_entry *out, int max);
int kvmvm_cpuid_shape(struct kvmvm_cpuid_entry *e, int n, int vcpu_id, int ncpus);
