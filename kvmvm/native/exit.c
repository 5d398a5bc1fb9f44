/*
 * The one exit-dispatch function: kvm_run is decoded here and nowhere else.
 * PIO and MMIO go to their buses; unhandled accesses read as zeros and are counted;
 * the exits that end a VM record a precise reason.
 */
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>

#include "internal.h"

static uint64_t guest_rip(struct vcpu *v)
{
    struct kvm_regs regs;
    if (ioctl(v->fd, KVM_GET_REGS, &regs) < 0)
        return 0;
    return regs.rip;
}

static int handle_io(struct vcpu *v)
{
    struct kvm_run *run = v->run;
    struct kvmvm_vm *vm = v->vm;
    uint32_t size = run->io.size, count = run->io.count;
    uint64_t off = run->io.data_offset;

    /* the data area must lie inside the kvm_run mapping (KVM guarantees it; we check) */
    if (size == 0 || size > 8 || off >= v->run_size ||
        (uint64_t)size * count > v->run_size - off) {
        vm_stop_simple(vm, KVMVM_STOP_ERROR, EFAULT, v->id);
        return 1;
    }
    uint8_t *data = (uint8_t *)run + off;
    int is_write = run->io.direction == KVM_EXIT_IO_OUT;
    for (uint32_t i = 0; i < count; i++, data += size) {
        if (!bus_dispatch(&vm->pio, run->io.port, is_write, data, size))
            atomic_fetch_add_explicit(&vm->io_unhandled, 1, memory_order_relaxed);
    }
    return 0;
}

static int handle_mmio(struct vcpu *v)
{
    struct kvm_run *run = v->run;
    struct kvmvm_vm *vm = v->vm;
    uint32_t len = run->mmio.len;

    if (len == 0 || len > sizeof(run->mmio.data)) {
        vm_stop_simple(vm, KVMVM_STOP_ERROR, EFAULT, v->id);
        return 1;
    }
    if (!bus_dispatch(&vm->mmio, run->mmio.phys_addr, run->mmio.is_write, run->mmio.data, len))
        atomic_fetch_add_explicit(&vm->mmio_unhandled, 1, memory_order_relaxed);
    return 0;
}

int vcpu_handle_exit(struct vcpu *v)
{
    struct kvm_run *run = v->run;
    struct kvmvm_vm *vm = v->vm;
    struct kvmvm_stop_info info = { .vcpu = v->id };

    atomic_fetch_add_explicit(&vm->exits, 1, memory_order_relaxed);
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
        atomic_fetch_add_explicit(&vm->exits_io, 1, memory_order_relaxed);
        return handle_io(v);
    case KVM_EXIT_MMIO:
        atomic_fetch_add_explicit(&vm->exits_mmio, 1, memory_order_relaxed);
        return handle_mmio(v);
    case KVM_EXIT_INTR:
        atomic_fetch_add_explicit(&vm->exits_intr, 1, memory_order_relaxed);
        return 0;
    case KVM_EXIT_HLT:
        info.reason = KVMVM_STOP_HALT;
        info.rip = guest_rip(v);
        break;
    case KVM_EXIT_SHUTDOWN:
        info.reason = KVMVM_STOP_SHUTDOWN;
        info.rip = guest_rip(v);
        break;
    case KVM_EXIT_FAIL_ENTRY:
        info.reason = KVMVM_STOP_FAIL_ENTRY;
        info.code = run->fail_entry.hardware_entry_failure_reason;
        break;
    case KVM_EXIT_INTERNAL_ERROR:
        info.reason = KVMVM_STOP_INTERNAL_ERROR;
        info.code = run->internal.suberror;
        info.rip = guest_rip(v);
        info.ndata = run->internal.ndata < 4 ? run->internal.ndata : 4;
        for (uint32_t i = 0; i < info.ndata; i++)
            info.data[i] = run->internal.data[i];
        break;
    case KVM_EXIT_SYSTEM_EVENT:
        info.reason = run->system_event.type == KVM_SYSTEM_EVENT_RESET ? KVMVM_STOP_RESET
                    : run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN ? KVMVM_STOP_POWEROFF
                    : KVMVM_STOP_SYSTEM_EVENT;
        info.code = run->system_event.type;
        break;
    default:
        atomic_fetch_add_explicit(&vm->exits_other, 1, memory_order_relaxed);
        info.reason = KVMVM_STOP_UNKNOWN_EXIT;
        info.code = run->exit_reason;
        info.rip = guest_rip(v);
        break;
    }
    vm_request_stop(vm, &info);
    return 1;
}
