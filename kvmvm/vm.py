"""The object API over one KVM virtual machine (the top cffi layer).

A `Vm` owns the VM fd, guest RAM, vCPUs and the C devices; `Machine` (kvmvm.machine)
builds one from a configuration and boots a guest in it.
"""

from __future__ import annotations

import errno
import os
from kvmvm.record import Factory, record

from kvmvm.bindings import STOP_REASONS, check, ffi, lib, register_py_device, unregister_py_device
from kvmvm.errors import GuestMemoryError, KvmError
from kvmvm.prepared import PreparedVm  # noqa: F401 (also kvmvm.vm.PreparedVm)

BUS_PIO = lib.KVMVM_BUS_PIO
BUS_MMIO = lib.KVMVM_BUS_MMIO
MODE_PROTECTED32 = lib.KVMVM_MODE_PROTECTED32
MODE_LONG64 = lib.KVMVM_MODE_LONG64


@record
class StopInfo:
    """Why a VM stopped: `reason` is a name from bindings.STOP_REASONS."""

    reason: str
    code: int = 0
    vcpu: int = -1
    rip: int = 0
    data: list = Factory(list)


@record
class Caps:
    api_version: int
    irqchip: bool
    pit2: bool
    irqfd: bool
    ioeventfd: bool
    immediate_exit: bool
    max_vcpus: int
    nr_memslots: int


def open_error(path: str, err: int) -> KvmError:
    if err == errno.ENOENT:
        return KvmError(err, f"{path} does not exist: this host has no KVM (load kvm_intel/kvm_amd, or enable nested virtualisation)")
    if err in (errno.EACCES, errno.EPERM):
        return KvmError(err, f"{path}: permission denied (run as root or join the kvm group)")
    if err == errno.ENOTSUP:
        return KvmError(err, f"{path}: unsupported KVM API version (need 12)")
    return KvmError(err, f"{path}: cannot create a VM: {os.strerror(err)}")


class Vm:
    def __init__(self, dev_path: str = "/dev/kvm", prepared: PreparedVm | None = None):
        """A new VM on dev_path, or the one `prepared` made (it already has
        `self.ram_regions` of its RAM regions; the caller adds the rest)."""
        err = ffi.new("int *")
        self.ram_regions = 0
        got = prepared.take() if prepared is not None else None
        if got is not None:
            vm, err[0], self.ram_regions = got
        else:
            vm = lib.kvmvm_vm_new(dev_path.encode(), err)
        if vm == ffi.NULL:
            raise open_error(dev_path, -err[0])
        self._vm = vm
        self._py_handles: list[int] = []
        self._owned: list = []      # helpers that end with the VM (passt): closed after it
        c = ffi.new("struct kvmvm_caps *")
        lib.kvmvm_vm_caps(vm, c)
        self.caps = Caps(c.api_version, bool(c.irqchip), bool(c.pit2), bool(c.irqfd),
                         bool(c.ioeventfd), bool(c.immediate_exit), c.max_vcpus, c.nr_memslots)

    # --- memory ---
    def add_ram(self, gpa: int, size: int) -> None:
        check(lib.kvmvm_vm_add_ram(self._vm, gpa, size), f"guest RAM {size >> 20} MiB at {gpa:#x}")

    def write(self, gpa: int, data) -> None:
        """Copy data (bytes, or any buffer such as a view into a mapped image) to guest memory."""
        if not isinstance(data, bytes):
            data = ffi.from_buffer(data)
        if lib.kvmvm_vm_mem_write(self._vm, gpa, data, len(data)) < 0:
            raise GuestMemoryError(f"write of {len(data):#x} bytes at {gpa:#x} is outside guest memory")

    def load_file(self, gpa: int, fd: int, offset: int, length: int, map: bool = False) -> None:
        """length bytes of fd at offset into guest memory at gpa, read (pread) or, with map,
        mapped copy-on-write page by page (only for files that never change)."""
        rc = lib.kvmvm_vm_load_file(self._vm, gpa, fd, offset, length, int(map))
        if rc == -errno.EFAULT:
            raise GuestMemoryError(f"load of {length:#x} bytes at {gpa:#x} is outside guest memory")
        check(rc, f"load {length:#x} bytes of the image at {gpa:#x}")

    def read(self, gpa: int, size: int) -> bytes:
        buf = ffi.new("uint8_t[]", size)
        if lib.kvmvm_vm_mem_read(self._vm, gpa, buf, size) < 0:
            raise GuestMemoryError(f"read of {size:#x} bytes at {gpa:#x} is outside guest memory")
        return bytes(ffi.buffer(buf, size))

    # --- vCPUs ---
    def create_vcpus(self, n: int) -> None:
        check(lib.kvmvm_vm_create_vcpus(self._vm, n), f"create {n} vCPU(s)")

    def set_boot_regs(self, vcpu: int, mode: int, rip: int, *, rsp: int = 0, rsi: int = 0,
                      rbx: int = 0, gdt_gpa: int, pml4_gpa: int = 0) -> None:
        r = ffi.new("struct kvmvm_boot_regs *")
        r.mode, r.rip, r.rsp, r.rsi, r.rbx = mode, rip, rsp, rsi, rbx
        r.gdt_gpa, r.pml4_gpa = gdt_gpa, pml4_gpa
        check(lib.kvmvm_vm_boot_regs(self._vm, vcpu, r), f"vCPU {vcpu} boot registers")

    # --- devices ---
    def add_serial(self, port: int = 0x3F8, irq: int = 4, out_fd: int = 1, in_fd: int = -1) -> None:
        check(lib.kvmvm_vm_add_serial(self._vm, port, irq, out_fd, in_fd), "serial port")

    def add_debug_exit(self, port: int = 0xF4, size: int = 4) -> None:
        check(lib.kvmvm_vm_add_debug_exit(self._vm, port, size), "debug-exit port")

    def add_i8042(self) -> None:
        check(lib.kvmvm_vm_add_i8042(self._vm), "i8042")

    def add_pit(self) -> None:
        """KVM's in-kernel i8254 PIT (Linux calibrates against it); none twice."""
        rc = lib.kvmvm_vm_add_pit(self._vm)
        if rc != -errno.EEXIST:     # a PreparedVm made it already
            check(rc, "i8254 PIT")

    def add_boot_timer(self, gpa: int) -> None:
        check(lib.kvmvm_vm_add_boot_timer(self._vm, gpa), "boot timer")

    def add_acpi_pm(self, port: int) -> None:
        check(lib.kvmvm_vm_add_acpi_pm(self._vm, port), "ACPI PM registers")

    def add_pvpanic(self, port: int = 0x505) -> None:
        check(lib.kvmvm_vm_add_pvpanic(self._vm, port), "pvpanic")

    def add_py_device(self, bus: int, base: int, length: int, dev) -> None:
        h = register_py_device(dev)
        rc = lib.kvmvm_vm_add_py_device(self._vm, bus, base, length, h)
        if rc < 0:
            unregister_py_device(h)
            check(rc, f"device at {base:#x}")
        self._py_handles.append(h)

    def set_seccomp(self, level: int, test_hook: int = -1) -> None:
        """Filter this VM's C threads (vCPUs, workers, console) at level 0, 1 or 2 (before start)."""
        check(lib.kvmvm_vm_set_seccomp(self._vm, level, test_hook, int(bool(self._py_handles))),
              "seccomp filters")

    def irq_line(self, irq: int, level: int) -> None:
        check(lib.kvmvm_vm_irq_line(self._vm, irq, level), f"irq {irq}")

    # --- running ---
    def start(self) -> None:
        check(lib.kvmvm_vm_start(self._vm), "start vCPUs")

    def wait(self, timeout: float | None = None) -> StopInfo | None:
        """Block until the VM stops (None: for ever); None when the timeout ran out first."""
        out = ffi.new("struct kvmvm_stop_info *")
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        if lib.kvmvm_vm_wait(self._vm, ms, out) == 1:
            return None
        return StopInfo(STOP_REASONS.get(out.reason, f"reason-{out.reason}"), out.code, out.vcpu,
                        out.rip, [out.data[i] for i in range(out.ndata)])

    def stop(self, reason: int = lib.KVMVM_STOP_REQUESTED, code: int = 0) -> None:
        lib.kvmvm_vm_stop(self._vm, reason, code)

    def stats(self) -> dict:
        s = ffi.new("struct kvmvm_stats *")
        lib.kvmvm_vm_stats(self._vm, s)
        return {
            "exits": s.exits, "exits_io": s.exits_io, "exits_mmio": s.exits_mmio,
            "exits_intr": s.exits_intr, "exits_other": s.exits_other,
            "io_unhandled": s.io_unhandled, "mmio_unhandled": s.mmio_unhandled,
            "py_calls": s.py_calls, "serial_dropped": s.serial_dropped,
            "t_created_ns": s.t_created_ns, "t_first_run_ns": s.t_first_run_ns,
            "t_boot_signal_ns": s.t_boot_signal_ns, "t_end_ns": s.t_end_ns,
        }

    # --- pause and snapshot state (kvmvm.snapshot builds on these) ---
    def pause(self, timeout: float = 1.0) -> None:
        rc = lib.kvmvm_vm_pause(self._vm, int(timeout * 1000))
        if rc == -errno.ESHUTDOWN:
            raise KvmError(-rc, "pause: the VM has stopped")
        if rc == -errno.ETIMEDOUT:
            raise KvmError(-rc, f"pause: the vCPUs did not stop within {timeout:g} s")
        if rc == -errno.ENOTSUP:
            raise KvmError(-rc, "pause: this KVM lacks KVM_CAP_IMMEDIATE_EXIT")
        check(rc, "pause")

    def resume(self) -> None:
        check(lib.kvmvm_vm_resume(self._vm), "resume")

    @property
    def paused(self) -> bool:
        return bool(lib.kvmvm_vm_paused(self._vm))

    def save_state(self) -> bytes:
        """The vCPU, VM and device state of a paused VM, as a section stream."""
        out = ffi.new("uint8_t **")
        n = ffi.new("uint64_t *")
        check(lib.kvmvm_vm_save_state(self._vm, out, n), "save VM state")
        try:
            return bytes(ffi.buffer(out[0], n[0]))
        finally:
            lib.kvmvm_free(out[0])

    def load_state(self, data: bytes) -> None:
        what = ffi.new("char **")
        rc = lib.kvmvm_vm_load_state(self._vm, data, len(data), what)
        if rc < 0:
            raise KvmError(-rc, f"restore {ffi.string(what[0]).decode()}: {os.strerror(-rc)}")

    def save_ram(self, slot: int, fd: int) -> int:
        """Write RAM region `slot` to fd sparsely; returns the bytes written."""
        n = ffi.new("uint64_t *")
        check(lib.kvmvm_vm_save_ram(self._vm, slot, fd, n), f"save guest RAM region {slot}")
        return n[0]

    def add_ram_file(self, gpa: int, size: int, fd: int) -> None:
        check(lib.kvmvm_vm_add_ram_file(self._vm, gpa, size, fd),
              f"map guest RAM {size >> 20} MiB at {gpa:#x} from a file")

    def remap_ram_file(self, slot: int, fd: int) -> None:
        check(lib.kvmvm_vm_remap_ram_file(self._vm, slot, fd), f"remap guest RAM region {slot}")

    def vcpu_cpuid(self, vcpu: int = 0) -> list[tuple]:
        arr = ffi.new("struct kvmvm_cpuid_entry[]", 256)
        n = check(lib.kvmvm_vm_vcpu_cpuid(self._vm, vcpu, arr, 256), "KVM_GET_CPUID2")
        return [(a.function, a.index, a.flags, a.eax, a.ebx, a.ecx, a.edx) for a in arr[0:n]]

    def state_support(self) -> dict:
        """Which snapshot ioctls this /dev/kvm answers: name -> 0 or -errno."""
        o = ffi.new("struct kvmvm_state_support *")
        check(lib.kvmvm_vm_state_probe(self._vm, o), "probe snapshot support")
        return {f: getattr(o, f) for f in ("regs", "sregs", "fpu", "xsave", "xcrs", "msrs", "lapic",
                                           "events", "debugregs", "mpstate", "irqchip", "pit2",
                                           "clock", "tsc_khz", "immediate_exit", "nr_msrs",
                                           "nr_msrs_ok")}

    def supported_cpuid(self) -> list[tuple]:
        arr = ffi.new("struct kvmvm_cpuid_entry[]", 256)
        n = check(lib.kvmvm_vm_supported_cpuid(self._vm, arr, 256), "KVM_GET_SUPPORTED_CPUID")
        return [(a.function, a.index, a.flags, a.eax, a.ebx, a.ecx, a.edx) for a in arr[0:n]]

    def own(self, helper) -> None:
        """Close `helper` (anything with close()) when the VM is closed, after its devices."""
        self._owned.append(helper)

    def close(self) -> None:
        if self._vm is not None:
            lib.kvmvm_vm_free(self._vm)
            self._vm = None
            for h in self._py_handles:
                unregister_py_device(h)
            self._py_handles.clear()
        while self._owned:
            self._owned.pop().close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
