"""Machine: a configuration turned into a running microVM, and the outcome of running it.

This is the Python API programs use; the CLI (`kvmvm boot`) is a thin layer over it.
"""

from __future__ import annotations

import os
import time
from kvmvm.record import Factory, record

from kvmvm.boot import layout
from kvmvm.errors import ConfigError, ImageError

MIN_MEMORY_MIB = 16
MAX_MEMORY_MIB = 1 << 20
DEBUG_EXIT_PORT = 0xF4


@record
class MachineConfig:
    """What to boot and how big: the same fields as `kvmvm boot`'s flags."""

    kernel: str
    cmdline: str = ""
    initrd: str | None = None
    memory_mib: int = 128
    cpus: int = 1
    timeout: float | None = None
    serial_out_fd: int = 1        # where the guest's console goes
    serial_in_fd: int = -1        # where its input comes from (-1: none)
    kvm_path: str = "/dev/kvm"
    drives: list = Factory(list)   # "PATH[,ro]" specs; the first is /dev/vda
    nets: list = Factory(list)     # "tap=NAME[,mac=..]" or "user[,mac=..][,tcp=H:G][,udp=H:G]" specs
    vsock: str | None = None                     # "cid=N,uds=PATH"
    rng: bool = True
    virtio_cmdline: str = "auto"                 # virtio_mmio.device= on the command line:
                                                 # on, off, or auto (off for Linux with ACPI,
                                                 # whose DSDT lists them: both would clash)
    entry: str = "auto"                          # ELF kernels: "pvh", "64" (boot_params) or auto
    acpi: bool = True                            # ACPI tables (RSDP/XSDT/FADT/MADT/DSDT)

    def validate(self) -> None:
        if not isinstance(self.memory_mib, int) or self.memory_mib < MIN_MEMORY_MIB:
            raise ConfigError(f"--memory must be at least {MIN_MEMORY_MIB} MiB (got {self.memory_mib})")
        if self.memory_mib > MAX_MEMORY_MIB:
            raise ConfigError(f"--memory must be at most {MAX_MEMORY_MIB} MiB (got {self.memory_mib})")
        if not isinstance(self.cpus, int) or not 1 <= self.cpus <= 64:
            raise ConfigError(f"--cpus must be between 1 and 64 (got {self.cpus})")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"--timeout must be positive (got {self.timeout})")
        if self.virtio_cmdline not in ("auto", "on", "off"):
            raise ConfigError(f"--virtio-cmdline must be auto, on or off (got {self.virtio_cmdline!r})")
        if self.entry not in ("auto", "pvh", "64"):
            raise ConfigError(f"--entry must be auto, pvh or 64 (got {self.entry!r})")
        if len(self.cmdline.encode()) + 1 > layout.CMDLINE_MAX:
            raise ConfigError(f"kernel command line is longer than {layout.CMDLINE_MAX - 1} bytes")


@record
class Result:
    """How a VM ended: `status` is what `kvmvm boot` exits with."""

    outcome: str                  # "ok" | "failed" | "timeout" | "stopped"
    reason: str                   # bindings.STOP_REASONS name
    status: int
    message: str
    code: int = 0
    rip: int = 0
    stats: dict = Factory(dict)
    timings_ms: dict = Factory(dict)

    def to_dict(self) -> dict:
        return self.asdict()


def read_image(path: str, what: str = "kernel image") -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} is a directory: {path}") from None
    except PermissionError:
        raise ConfigError(f"{what} is not readable: {path}") from None
    except OSError as e:
        raise ConfigError(f"{what} cannot be read: {path}: {e.strerror}") from None


def outcome_of(stop, timeout: float | None) -> tuple[str, int, str]:
    """(outcome, exit status, one-line message) for a StopInfo."""
    r = stop.reason
    if r == "debug-exit":
        st = ((stop.code << 1) | 1) & 0xFF
        return "ok", st, f"guest wrote {stop.code:#x} to the debug-exit port (status {st})"
    if r in ("reset", "halt", "poweroff"):
        return "ok", 0, {"reset": "guest reset the machine", "halt": "guest halted",
                         "poweroff": "guest powered off"}[r]
    if r == "panic":
        return "failed", 3, "guest kernel panicked (pvpanic); see its console output above"
    if r == "triple-fault":
        return "failed", 1, f"guest triple-faulted (KVM_EXIT_SHUTDOWN) near rip {stop.rip:#x}"
    if r == "internal-error":
        what = {1: "emulation failure", 2: "simultaneous exceptions", 3: "delivery event"}.get(
            stop.code, "internal error")
        return "failed", 1, (f"KVM internal error: suberror {stop.code} ({what}) at guest rip "
                             f"{stop.rip:#x}")
    if r == "fail-entry":
        return "failed", 1, f"VM entry failed: hardware entry failure reason {stop.code:#x}"
    if r == "timeout":
        return "timeout", 124, f"timed out after {timeout:g} s; VM stopped"
    if r == "stopped":
        return "stopped", 130, "VM stopped on request"
    if r == "host-error":
        return "failed", 1, f"host error while running the VM: {os.strerror(stop.code)}"
    if r == "unknown-exit":
        return "failed", 1, f"unhandled KVM exit reason {stop.code} at guest rip {stop.rip:#x}"
    return "failed", 1, f"VM stopped: {r} (code {stop.code:#x})"


class Machine:
    """One microVM: build it with `Machine(cfg)`, run it with `run()`."""

    def __init__(self, cfg: MachineConfig, t0_ns: int | None = None):
        cfg.validate()
        self.cfg = cfg
        self.t0_ns = t0_ns or time.monotonic_ns()
        self.vm = None
        self.t_vm_created_ns = 0
        self.virtio = []
        self.ram = layout.RamLayout(cfg.memory_mib * layout.MiB)
        self.kernel_data = read_image(cfg.kernel)
        self.initrd_data = read_image(cfg.initrd, "initrd") if cfg.initrd else None
        self.kernel = self._parse_kernel()
        if self.is_linux:
            from kvmvm.host import linux_guest_problem

            problem = linux_guest_problem(cfg.kvm_path)
            if problem:
                from kvmvm.errors import HostUnsupported

                raise HostUnsupported(problem)

    def _parse_kernel(self):
        from kvmvm.boot import bzimage, elf

        data, path = self.kernel_data, self.cfg.kernel
        if elf.is_elf(data):
            k = elf.parse(data, path)
            if self.cfg.entry == "pvh" and k.pvh_entry is None:
                raise ImageError(f"{path}: --entry pvh, but the image has no PVH entry note")
            if self.cfg.entry == "64":
                k.pvh_entry = None
            elf.check_fits(k, self.ram)
            return k
        if bzimage.is_bzimage(data):
            k = bzimage.parse(data, path)
            bzimage.check_fits(k, self.ram)
            if self.cfg.entry == "pvh":
                raise ImageError(f"{path}: --entry pvh needs an ELF vmlinux; a bzImage boots at its 64-bit entry")
            return k
        raise ImageError(f"{path}: not an ELF or bzImage kernel image")

    @property
    def is_linux(self) -> bool:
        return self.kernel.is_linux

    # --- building the VM ---
    def build(self) -> None:
        self._build_platform()
        self._load_kernel()
        self.vm.create_vcpus(self.cfg.cpus)
        self._set_boot_regs()

    def _build_platform(self, ram_fds: list[int] | None = None) -> None:
        """The VM, its RAM (anonymous, or ram_fds mapped copy-on-write) and its devices."""
        from kvmvm.vm import Vm

        cfg = self.cfg
        vm = self.vm = Vm(cfg.kvm_path)
        self.t_vm_created_ns = time.monotonic_ns()
        for i, (gpa, size) in enumerate(self.ram.regions):
            if ram_fds is None:
                vm.add_ram(gpa, size)
            else:
                vm.add_ram_file(gpa, size, ram_fds[i])
        vm.add_serial(0x3F8, 4, cfg.serial_out_fd, cfg.serial_in_fd)
        vm.add_debug_exit(DEBUG_EXIT_PORT, 4)
        vm.add_i8042()
        vm.add_boot_timer(layout.BOOT_TIMER_GPA)
        vm.add_acpi_pm(layout.ACPI_PM_PORT)
        vm.add_pvpanic(layout.PVPANIC_PORT)
        from kvmvm.devices import attach_all

        self.virtio = attach_all(vm, cfg)

    @property
    def virtio_on_cmdline(self) -> bool:
        mode = self.cfg.virtio_cmdline
        if mode == "auto":
            acpi_seen = self.cfg.acpi and "acpi=off" not in self.cfg.cmdline.split()
            return not (self.is_linux and acpi_seen)
        return mode == "on"

    def full_cmdline(self) -> str:
        """The user's command line plus one virtio_mmio.device= per virtio device."""
        parts = [self.cfg.cmdline] if self.cfg.cmdline else []
        if self.virtio_on_cmdline:
            parts += [s.cmdline() for s in self.virtio]
        return " ".join(parts)

    def _load_kernel(self) -> None:
        from kvmvm.boot import acpi, bootparams, bzimage, elf, mptable, pvh

        vm, k, cfg = self.vm, self.kernel, self.cfg
        is_bz = isinstance(k, bzimage.BzImage)
        if is_bz:
            vm.write(k.load_addr, k.kernel)
        else:
            elf.load(k, vm.write)
        cmd = self.full_cmdline().encode() + b"\0"
        limit = min(layout.CMDLINE_MAX, k.cmdline_size + 1) if is_bz else layout.CMDLINE_MAX
        if len(cmd) > limit:
            raise ConfigError(f"kernel command line is longer than {limit - 1} bytes")
        vm.write(layout.CMDLINE, cmd)
        initrd = self._place_initrd(k.end) if self.initrd_data is not None else None
        vm.write(mptable.MPTABLE_GPA, mptable.build(cfg.cpus))
        rsdp = 0
        if cfg.acpi:
            devs = [acpi.AcpiDevice(v.base, v.size, v.irq) for v in self.virtio]
            rsdp, blob = acpi.build(cfg.cpus, devs)
            vm.write(rsdp, blob)
        vm.write(layout.VMGENID_GPA, os.urandom(16))     # the VM generation ID
        e820 = self.ram.e820()
        vm.write(layout.PVH_START_INFO, pvh.start_info(layout.CMDLINE, e820, rsdp, initrd))
        vm.write(layout.ZERO_PAGE, bootparams.build(layout.CMDLINE, len(cmd) - 1, e820,
                                                    k.setup_header if is_bz else None, initrd, rsdp))

    def _place_initrd(self, kernel_end: int) -> tuple[int, int]:
        size = len(self.initrd_data)
        top = min(self.ram.low_end, self.kernel.initrd_max)
        gpa = (top - size) & ~0xFFF
        if gpa < kernel_end or size == 0:
            raise ConfigError(f"initrd ({size >> 20} MiB) does not fit in guest memory "
                              f"({self.cfg.memory_mib} MiB) after the kernel")
        self.vm.write(gpa, self.initrd_data)
        return gpa, size

    def _set_boot_regs(self) -> None:
        from kvmvm.vm import MODE_LONG64, MODE_PROTECTED32

        k = self.kernel
        if k.pvh_entry is not None:
            self.vm.set_boot_regs(0, MODE_PROTECTED32, k.pvh_entry, rbx=layout.PVH_START_INFO,
                                  gdt_gpa=layout.GDT_GPA)
        else:
            self.vm.set_boot_regs(0, MODE_LONG64, k.entry64, rsp=layout.BOOT_STACK,
                                  rsi=layout.ZERO_PAGE, gdt_gpa=layout.GDT_GPA, pml4_gpa=layout.PML4)

    # --- running ---
    started = False

    def start(self) -> None:
        """Build (if needed) and start the vCPUs; the VM runs until stop() or its end."""
        if self.vm is None:
            self.build()
        self.vm.start()
        self.started = True

    def run(self) -> Result:
        """Build and start (if needed), wait for the end (or the timeout) and tear down."""
        from kvmvm.bindings import lib

        if not self.started:
            self.start()
        vm, cfg = self.vm, self.cfg
        deadline = None if cfg.timeout is None else time.monotonic() + cfg.timeout
        try:
            stop = None
            while stop is None:
                slice_s = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
                stop = vm.wait(slice_s)
                if stop is None and deadline is not None and time.monotonic() >= deadline:
                    vm.stop(lib.KVMVM_STOP_TIMEOUT)
                    stop = vm.wait(None)
        except KeyboardInterrupt:
            vm.stop(lib.KVMVM_STOP_REQUESTED)
            stop = vm.wait(None)
        res = self._result(stop)
        self.close()
        return res

    def wait(self, timeout: float | None = None) -> Result | None:
        """Wait for the VM to end: its Result, or None when timeout (seconds) ran out first.
        The VM stays open (close() tears it down)."""
        stop = self.vm.wait(timeout)
        return None if stop is None else self._result(stop)

    def stop(self) -> None:
        """Ask the VM to stop (it ends within a second, paused or not)."""
        if self.vm is not None:
            self.vm.stop()

    def _result(self, stop) -> Result:
        outcome, status, msg = outcome_of(stop, self.cfg.timeout)
        stats = self.vm.stats()
        return Result(outcome, stop.reason, status, msg, stop.code, stop.rip,
                      {k: v for k, v in stats.items() if not k.startswith("t_")},
                      self._timings(stats))

    # --- pause, snapshot, restore, fork (kvmvm.snapshot does the work) ---
    def pause(self, timeout: float = 1.0) -> None:
        """Every vCPU out of KVM_RUN and held, virtio workers parked: nothing changes."""
        self.vm.pause(timeout)

    def resume(self) -> None:
        self.vm.resume()

    @property
    def paused(self) -> bool:
        return self.vm is not None and self.vm.paused

    def snapshot(self, out_dir: str, *, resume: bool = False):
        """Write a full snapshot of this (paused, or paused here) VM to out_dir; the VM
        stays paused unless resume. Returns a kvmvm.snapshot.Snapshot."""
        from kvmvm.snapshot.persist import save

        return save(self, out_dir, resume=resume)

    @classmethod
    def restore(cls, snap_dir: str, *, net_override: dict | None = None,
                vsock_uds: str | None = None, serial_out_fd: int = 1, serial_in_fd: int = -1,
                drives: list | None = None, start: bool = True) -> "Machine":
        """A running Machine from a snapshot directory (memory mapped copy-on-write)."""
        from kvmvm.snapshot.persist import restore

        return restore(cls, snap_dir, net_override=net_override, vsock_uds=vsock_uds,
                       serial_out_fd=serial_out_fd, serial_in_fd=serial_in_fd, drives=drives,
                       start=start)

    def fork(self, n: int, **kw) -> list["Machine"]:
        """n running copy-on-write children of this running VM (kvmvm.snapshot.fork)."""
        from kvmvm.snapshot.fork import fork

        return fork(self, n, **kw)

    def _timings(self, st: dict) -> dict:
        def rel(ns):
            return round((ns - self.t0_ns) / 1e6, 3) if ns else None

        return {
            "process_start": rel(_process_start_ns()),
            "vm_created": rel(self.t_vm_created_ns),
            "first_kvm_run": rel(st["t_first_run_ns"]),
            "boot_signal": rel(st["t_boot_signal_ns"]),
            "end": rel(st["t_end_ns"]),
            "now": rel(time.monotonic_ns()),
        }

    def close(self) -> None:
        if self.vm is not None:
            self.vm.close()
            self.vm = None


def _process_start_ns() -> int:
    """This process's start on CLOCK_MONOTONIC, to /proc's clock-tick resolution (10 ms).

    /proc start times are compared with a thread started now, in the same units: /proc's
    ticks can be offset from CLOCK_BOOTTIME on some hosts, and the offset cancels out.
    """
    import threading

    def ticks(path: str) -> int:
        with open(path) as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])

    box = {}

    def probe():
        box["t"] = ticks(f"/proc/self/task/{threading.get_native_id()}/stat")

    try:
        th = threading.Thread(target=probe)
        th.start()
        th.join()
        age = box["t"] - ticks("/proc/self/stat")
        return time.monotonic_ns() - age * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, KeyError):
        return 0


def boot(cfg: MachineConfig) -> Result:
    """Boot `cfg` to the end and return how it ended (the Python API's one-call form)."""
    m = Machine(cfg)
    try:
        return m.run()
    finally:
        m.close()
