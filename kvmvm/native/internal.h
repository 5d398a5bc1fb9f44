/* kvmvm C core: internal types shared by the C files (not seen by cffi). */
#ifndef KVMVM_INTERNAL_H
#define KVMVM_INTERNAL_H

#include <stdint.h>
#include <stddef.h>
#include <pthread.h>
#include <stdatomic.h>
#include <linux/kvm.h>

#include "api.h"

/* --- guest memory: all host access to guest RAM goes through these (addr + len checked) --- */
struct gmem_region {
    uint64_t gpa;
    uint64_t size;
    uint8_t *hva;       /* start of the usable mapping (guard pages on either side) */
    uint8_t *map;       /* whole mapping including guards */
    uint64_t map_len;
    int fd;             /* the file mapped MAP_PRIVATE under hva (snapshot, fork), or -1 */
};

#define GMEM_MAX_REGIONS 8

struct kvmvm_gmem {
    int nr;
    struct gmem_region r[GMEM_MAX_REGIONS];
};

/* Host pointer for [gpa, gpa+len) if it lies wholly inside one region, else NULL. */
void *gmem_ptr(struct kvmvm_gmem *gm, uint64_t gpa, uint64_t len);

/* --- devices and buses --- */
struct kvmvm_device;

struct device_ops {
    /* offset is relative to the device's base; data holds len bytes (1, 2, 4 or 8 usually) */
    void (*read)(struct kvmvm_device *dev, uint64_t offset, uint8_t *data, uint32_t len);
    void (*write)(struct kvmvm_device *dev, uint64_t offset, const uint8_t *data, uint32_t len);
    void (*destroy)(struct kvmvm_device *dev);
};

struct kvmvm_device {
    const char *name;
    const struct device_ops *ops;
    struct kvmvm_vm *vm;    /* may be NULL for devices on a stand-alone bus (tests) */
    void *priv;
};

struct bus_range {
    uint64_t base;
    uint64_t len;
    struct kvmvm_device *dev;
};

struct kvmvm_bus {
    pthread_rwlock_t lock;  /* readers: vCPUs dispatching; writer: insert/remove */
    int nr, cap;
    struct bus_range *ranges;   /* sorted by base, never overlapping */
};

int bus_insert(struct kvmvm_bus *bus, uint64_t base, uint64_t len, struct kvmvm_device *dev);
/* 1 when a device took the access, 0 when nothing is mapped there */
int bus_dispatch(struct kvmvm_bus *bus, uint64_t addr, int is_write, uint8_t *data, uint32_t len);
void bus_destroy_devices(struct kvmvm_bus *bus);
void bus_init_embedded(struct kvmvm_bus *bus);

struct kvmvm_device *pydev_new(uint64_t handle);

/* --- the VM and its vCPUs --- */
struct vcpu {
    int id;
    int fd;
    struct kvm_run *run;
    size_t run_size;
    pthread_t thread;
    int thread_started;
    struct kvmvm_vm *vm;
};

struct kvmvm_vm {
    int kvm_fd;
    int vm_fd;
    struct kvmvm_caps caps;
    struct kvmvm_gmem mem;
    struct kvmvm_bus pio;
    struct kvmvm_bus mmio;
    int nr_vcpus;
    int nr_vcpus_planned;
    struct vcpu vcpus[KVMVM_MAX_VCPUS];
    int started;
    int has_pit;                     /* kvmvm_vm_add_pit */

    pthread_mutex_t lock;
    pthread_cond_t cond;
    atomic_int stopping;             /* set once by the first stop request */
    struct kvmvm_stop_info stop;     /* valid once stopping is set (under lock) */
    int joined;                      /* 0, JOIN_BUSY while one waiter joins, JOIN_DONE */

    /* statistics: updated by vCPU threads with relaxed atomics */
    atomic_ullong exits, exits_io, exits_mmio, exits_intr, exits_other;
    atomic_ullong io_unhandled, mmio_unhandled, py_calls, serial_dropped;
    atomic_llong t_first_run_ns, t_boot_signal_ns;
    int64_t t_created_ns, t_end_ns;

    struct kvmvm_device *serial;     /* for its input thread */

    /* seccomp.c */
    int seccomp_level, seccomp_hook, seccomp_py;
    struct spawner *spawner;

    /* pause (pause.c): vCPUs park at the top of their loop while pause_req is set */
    atomic_int pause_req;
    int nr_parked;
    int paused;
    pthread_cond_t pause_cond;
    pthread_mutex_t pause_lock;     /* one pause/resume at a time (API thread, Python) */
};

int vm_register_ram(struct kvmvm_vm *vm, int slot);

/* pause.c: called by a vCPU thread that saw pause_req; returns when resumed or stopping */
void vcpu_park(struct vcpu *v);

/* snapshot state of devices (serial.c, virtio_state.c), appended to / read from a section
   stream (state.c) */
struct state_buf {
    uint8_t *p;
    uint64_t len, cap;
    int err;
};
void state_put(struct state_buf *b, uint32_t tag, uint32_t index, uint32_t version,
               const void *data, uint32_t len);
int serial_save(struct kvmvm_device *dev, struct state_buf *b);
void serial_drain_output(struct kvmvm_device *dev, int timeout_ms);
int serial_load(struct kvmvm_device *dev, const void *data, uint32_t len);
int virtio_save_all(struct kvmvm_vm *vm, struct state_buf *b);
int virtio_load(struct kvmvm_vm *vm, uint32_t index, const void *data, uint32_t len);
/* whether the VM has a virtio device (one whose worker a vCPU may start) */
int virtio_any(struct kvmvm_vm *vm);
/* park (1) or unpark (0) every virtio worker of the VM */
void virtio_park_all(struct kvmvm_vm *vm, int park);
int kvmvm_gmem_add_file(struct kvmvm_gmem *gm, uint64_t gpa, uint64_t size, int fd);

/* Record why the VM stops (first caller wins) and kick every vCPU out of KVM_RUN. */
void vm_request_stop(struct kvmvm_vm *vm, const struct kvmvm_stop_info *info);
void vm_stop_simple(struct kvmvm_vm *vm, int reason, uint64_t code, int vcpu);
/* the signal that kicks a thread out of a blocking call (no SA_RESTART) */
int vm_kick_signal(void);

/* the single exit-dispatch function: returns 0 to keep running, 1 when the vCPU must stop */
int vcpu_handle_exit(struct vcpu *v);

int vcpu_setup_cpuid(struct kvmvm_vm *vm, struct vcpu *v);
int vcpu_setup_boot(struct kvmvm_vm *vm, struct vcpu *v, const struct kvmvm_boot_regs *r);
int vcpu_setup_common(struct kvmvm_vm *vm, struct vcpu *v);

/* device constructors */
struct kvmvm_device *serial_new(struct kvmvm_vm *vm, int irq, int out_fd, int in_fd);
/* start the output writer and input reader threads; stop flushes output (bounded) */
int serial_start(struct kvmvm_device *dev);
void serial_stop(struct kvmvm_device *dev);
struct kvmvm_device *debug_exit_new(struct kvmvm_vm *vm);
struct kvmvm_device *i8042_new(struct kvmvm_vm *vm);
struct kvmvm_device *boot_timer_new(struct kvmvm_vm *vm);
struct kvmvm_device *acpi_pm_new(struct kvmvm_vm *vm);
struct kvmvm_device *pvpanic_new(struct kvmvm_vm *vm);

int64_t kvmvm_now_ns(void);

/* Large per-device buffers (the console's output ring, a virtqueue's chain) as their own
   anonymous pages rather than from malloc's heap: pages the device never touches cost
   nothing, and the small allocations of many VMs in one process stay packed together
   instead of each VM's landing on pages of its own between two big chunks. NULL on failure. */
void *pages_alloc(size_t len);
void pages_free(void *p, size_t len);

/* the Python slow path (defined by cffi: extern "Python+C") */
int kvmvm_py_io(uint64_t handle, int is_write, uint64_t offset, uint8_t *data, uint32_t len);

#endif
