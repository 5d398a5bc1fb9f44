"""Machine: a configuration turned into a running microVM, and the outcome of running it.

This is the Python API programs use; the CLI (`kvmvm boot`) is a thin layer over it.
"""

from __future__ import annotations

import errno
import os
import time
from kvmvm.record import Factory, record

from kvmvm.boot import layout
from kvmvm.errors import ConfigError, ImageError, KvmError

MIN_MEMORY_MIB = 16
MAX_MEMORY_MIB = 1 << 20
DEBUG_EXIT_PORT = 0xF4
MAX_IMAGE_BYTES = 4 << 30      # a kernel or initrd larger than this is a mistake
READ_MAX = 256 << 10           # images below this are read, not mapped (read_image)


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
    drives: list = Factory(list)   # "PATH[,ro][,direct][,id=ID]" specs; the first is /dev/vda
    nets: list = Factory(list)     # "tap=NAME[,mac=..]" or "user[,mac=..][,tcp=H:G][,udp=H:G]" specs
    vsock: str | None = None                     # "cid=N,uds=PATH"
    rng: bool = True
    virtio_cmdline: str = "auto"                 # virtio_mmio.device= on the command line:
                                                 # on, off, or auto (off for Linux with ACPI,
                                                 # whose DSDT lists them: both would clash)
    entry: str = "auto"                          # ELF kernels: "pvh", "64" (boot_params) or auto
    acpi: bool = True                            # ACPI tables (RSDP/XSDT/FADT/MADT/DSDT)
    pit: str = "auto"                            # in-kernel i8254 PIT: on, off, or auto (Linux
                                                 # kernels only: tearing one down costs ~15 ms)
    seccomp_level: int = 2                       # 0 off, 1 syscall allowlists, 2 with arguments
    seccomp_main: bool = False                   # also filter the calling thread once the VM
                                                 # runs (for good: for a process that ends with it)

    def validate(self) -> None:
        if not isinstance(self.memory_mib, int) or self.memory_mib < MIN_MEMORY_MIB:
            raise ConfigError(f"--memory must be at least {MIN_MEMORY_MIB} MiB (got {self.memory_mib})")
        if self.memory_mib > MAX_MEMORY_MIB:
            raise ConfigError(f"--memory must be at most {MAX_MEMORY_MIB} MiB (got {self.memory_mib})")
        if not isinstance(self.cpus, int) or not 1 <= self.cpus <= 64:
            raise ConfigError(f"--cpus must be between 1 and 64 (got {self.cpus})")
        if self.timeout is not None and not (0 < self.timeout < float("inf")):
            raise ConfigError(f"--timeout must be a positive number of seconds (got {self.timeout})")
        if self.virtio_cmdline not in ("auto", "on", "off"):
            raise ConfigError(f"--virtio-cmdline must be auto, on or off (got {self.virtio_cmdline!r})")
        if self.pit not in ("auto", "on", "off"):
            raise ConfigError(f"--pit must be auto, on or off (got {self.pit!r})")
        if self.seccomp_level not in (0, 1, 2):
            raise ConfigError(f"--seccomp-level must be 0, 1 or 2 (got {self.seccomp_level})")
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


def read_image(path: str, what: str = "kernel image"):
    """The file's bytes as a read-only mmap: nothing is read or copied until used, and only
    what is used (a vmlinux's PT_LOAD segments, not its symbols). Files under READ_MAX
    bytes (a tiny guest) are read into bytes instead: cheaper than importing mmap, mapping
    them and opening them again to load them. Only regular files (a FIFO would block, a
    character device such as /dev/zero never ends)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} is a directory: {path}") from None
    except PermissionError:
        raise ConfigError(f"{what} is not readable: {path}") from None
    except OSError as e:
        raise ConfigError(f"{what} cannot be read: {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{what} is a directory: {path}")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} is not a regular file: {path}")
        if st.st_size > MAX_IMAGE_BYTES:
            raise ConfigError(f"{what} is larger than {MAX_IMAGE_BYTES >> 30} GiB: {path}")
        if st.st_size == 0:
            return b""
        if st.st_size < READ_MAX:
            return _read_all(fd, st.st_size)
        import mmap

        try:
            return mmap.mmap(fd, 0, prot=mmap.PROT_READ)   # keeps its own reference to the file
        except (ValueError, OSError):
            return _read_all(fd, st.st_size)
    except OSError as e:
        raise ConfigError(f"{what} cannot be read: {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def _read_all(fd: int, size: int) -> bytes:
    """The file from fd's offset to its end (size: what fstat saw, the first read's size)."""
    chunks = []
    while b := os.read(fd, max(size, 1 << 16)):
        chunks.append(b)
    return b"".join(chunks)


DEBUG_EXIT_MAX = 0x7F


def debug_exit_status(v: int) -> int:
    """`kvmvm boot`'s exit status for debug-exit value v, unambiguous beside kvmvm's own
    statuses (0 ok, 1 VM failed, 2 bad input, 3 panic, 124 timeout, 130 interrupted):
    v = 2..0x7f give QEMU's isa-debug-exit status (v << 1) | 1, i.e. the odd numbers 5..255;
    v = 0 and 1, whose QEMU statuses 1 and 3 mean "failed" and "panic" here, give 4 and 6;
    v = 0x80..0xff, which (v << 1) | 1 would wrap onto other values, all give 8."""
    if v == 0:
        return 4
    if v == 1:
        return 6
    if v > DEBUG_EXIT_MAX:
        return 8
    return (v << 1) | 1


_TABLES: dict = {}      # (cpus, virtio windows, acpi) -> (MP table, RSDP address, ACPI blob)


def _boot_tables(cpus: int, windows: tuple, with_acpi: bool) -> tuple[bytes, int, bytes]:
    """The MP table and ACPI tables: pure functions of the CPUs and devices, built once per
    shape and process (building the AML is most of a tiny VM's Python time)."""
    key = (cpus, windows, with_acpi)
    t = _TABLES.get(key)
    if t is None:
        from kvmvm.boot import mptable

        rsdp, blob = 0, b""
        if with_acpi:
            from kvmvm.boot import acpi

            rsdp, blob = acpi.build(cpus, [acpi.AcpiDevice(*w) for w in windows])
        t = (mptable.build(cpus), rsdp, blob)
        if len(_TABLES) >= 64:
            _TABLES.clear()
        _TABLES[key] = t
    return t


class _ImageFile:
    """An image to load into guest memory. A mapped regular file (read_image) is read
    straight into guest memory (pread, no buffer between) or, when it lies in kvmvm's own
    cache (immutable: entries are published whole and never rewritten), mapped there
    copy-on-write page by page, so that nothing is copied before the guest touches it
    (only for images of MAP_MIN bytes or more: below that, reading costs less than mapping,
    and than finding the cache). Images read_image gave as bytes are copied from `data`."""

    MAP_MIN = 1 << 20

    def __init__(self, path: str, data):
        self.path, self.data, self.fd, self.map = path, data, -1, False

    def __enter__(self):
        if not isinstance(self.data, bytes):     # an mmap (read_image)
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return self
            if len(self.data) < self.MAP_MIN:
                return self
            from kvmvm.image.index import home_dir

            home = os.path.abspath(home_dir()) + os.sep
            # realpath (an lstat per component) only for paths that look like the cache's
            self.map = (os.path.abspath(self.path).startswith(home)
                        and os.path.realpath(self.path).startswith(os.path.realpath(home) + os.sep))
        return self

    def load(self, vm, gpa: int, offset: int, view) -> None:
        """view: the bytes at offset (a view into data)."""
        if self.fd < 0:
            vm.write(gpa, view)
        else:
            vm.load_file(gpa, self.fd, offset, len(view), map=self.map)

    def __exit__(self, *exc):
        if self.fd >= 0:
            os.close(self.fd)       # a mapping keeps the file itself alive
        return False


def outcome_of(stop, timeout: float | None) -> tuple[str, int, str]:
    """(outcome, exit status, one-line message) for a StopInfo."""
    r = stop.reason
    if r == "debug-exit":
        st = debug_exit_status(stop.code)
        if stop.code > DEBUG_EXIT_MAX:
            return "ok", st, (f"guest wrote {stop.code:#x} to the debug-exit port (status {st}: values above "
                              f"{DEBUG_EXIT_MAX:#x} have no status of their own; --json gives the value)")
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

    def __init__(self, cfg: MachineConfig, t0_ns: int | None = None, prepared=None):
        """prepared: a kvmvm.prepared.PreparedVm started earlier for this configuration (used
        when its device and RAM regions match, freed otherwise)."""
        self.prepared = prepared
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
        from kvmvm.boot import elf

        data, path = self.kernel_data, self.cfg.kernel
        if elf.is_elf(data):
            k = elf.parse(data, path)
            if self.cfg.entry == "pvh" and k.pvh_entry is None:
                raise ImageError(f"{path}: --entry pvh, but the image has no PVH entry note")
            if self.cfg.entry == "64":
                k.pvh_entry = None
            elf.check_fits(k, self.ram)
            return k
        from kvmvm.boot import bzimage     # only when it is not an ELF

        if bzimage.is_bzimage(data):
            k = bzimage.parse(data, path)
            bzimage.check_fits(k, self.ram)
            if self.cfg.entry == "pvh":
                raise ImageError(f"{path}: --entry pvh needs an ELF vmlinux; a bzImage boots at its 64-bit entry")
            return k
        raise ImageError(f"{path}: not an ELF or bzImage kernel image")

    @property
    def is_linux(self) -> bool:
        return self.kernel.is_linux if self.kernel is not None else self._was_linux

    # --- building the VM ---
    def build(self) -> None:
        self._build_platform()
        self._load_kernel()
        self.vm.create_vcpus(self.cfg.cpus)
        self._set_boot_regs()

    def _build_platform(self, ram_fds: list[int] | None = None) -> None:
        """The VM, its RAM (anonymous, or ram_fds mapped copy-on-write) and its devices."""
        from kvmvm.vm import Vm

        # what building needs, imported before the VM is joined (kvmvm.prepared.PreparedVm: its
        # kernel waits overlap these imports)
        from kvmvm.boot import bootparams, mptable, pvh  # noqa: F401
        from kvmvm.devices import attach_all, windows

        cfg = self.cfg
        # device specs checked (their modules imported) and the boot tables built up front
        _boot_tables(cfg.cpus, tuple(windows(cfg)), cfg.acpi)
        p, self.prepared = self.prepared, None
        pit_ok = cfg.pit == "on" or (cfg.pit == "auto" and self.is_linux)
        if p is not None and ((p.dev_path, p.regions) != (cfg.kvm_path, [tuple(r) for r in self.ram.regions])
                              or (p.pit and not pit_ok)):
            p.discard()
            p = None
        vm = self.vm = Vm(cfg.kvm_path, prepared=p)
        self.t_vm_created_ns = time.monotonic_ns()
        for i, (gpa, size) in enumerate(self.ram.regions):
            if i < vm.ram_regions:
                # made by the prepared VM (kvmvm.prepared.PreparedVm) already, anonymous and
                # untouched: a file goes under it in place (its KVM memory slot stays)
                if ram_fds is not None:
                    vm.remap_ram_file(i, ram_fds[i])
                continue
            if ram_fds is None:
                vm.add_ram(gpa, size)
            else:
                vm.add_ram_file(gpa, size, ram_fds[i])
        vm.add_serial(0x3F8, 4, cfg.serial_out_fd, cfg.serial_in_fd)
        vm.add_debug_exit(DEBUG_EXIT_PORT, 4)
        vm.add_i8042()
        if self.wants_pit:
            if not vm.caps.pit2:
                raise KvmError(errno.ENOTSUP, "--pit on: this KVM has no in-kernel PIT (KVM_CAP_PIT2 and an irqchip)")
            vm.add_pit()
        vm.add_boot_timer(layout.BOOT_TIMER_GPA)
        vm.add_acpi_pm(layout.ACPI_PM_PORT)
        vm.add_pvpanic(layout.PVPANIC_PORT)
        self.virtio = attach_all(vm, cfg)

    @property
    def wants_pit(self) -> bool:
        """auto: for Linux (it calibrates its timers against the PIT) when KVM has one."""
        if self.cfg.pit == "auto":
            return self.is_linux and self.vm is not None and self.vm.caps.pit2
        return self.cfg.pit == "on"

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
        from kvmvm.boot import bootparams, mptable, pvh
        from kvmvm.boot.elf import ElfKernel

        vm, k, cfg = self.vm, self.kernel, self.cfg
        is_bz = not isinstance(k, ElfKernel)
        with _ImageFile(cfg.kernel, self.kernel_data) as f:
            if is_bz:
                f.load(vm, k.load_addr, len(self.kernel_data) - len(k.kernel), k.kernel)
            else:
                for s in k.segments:
                    if len(s.data):
                        f.load(vm, s.paddr, s.offset, s.data)
        cmd = self.full_cmdline().encode() + b"\0"
        limit = min(layout.CMDLINE_MAX, k.cmdline_size + 1) if is_bz else layout.CMDLINE_MAX
        if len(cmd) > limit:
            raise ConfigError(f"kernel command line is longer than {limit - 1} bytes")
        vm.write(layout.CMDLINE, cmd)
        initrd = self._place_initrd(k.end) if self.initrd_data is not None else None
        mp, rsdp, blob = _boot_tables(cfg.cpus, tuple((v.base, v.size, v.irq) for v in self.virtio),
                                      cfg.acpi)
        vm.write(mptable.MPTABLE_GPA, mp)
        if blob:
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
        with _ImageFile(self.cfg.initrd, self.initrd_data) as f:
            f.load(self.vm, gpa, 0, memoryview(self.initrd_data))
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
        from kvmvm import seccomp

        if self.vm is None:
            self.build()
        self.vm.set_seccomp(self.cfg.seccomp_level, seccomp.test_hook())
        self.vm.start()
        self.started = True
        if self.cfg.seccomp_main:    # after start: the VM's threads must not inherit it
            seccomp.filter_main_thread(self.cfg.seccomp_level)

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
                # short slices: a signal (Ctrl-C, SIGTERM) is acted on when the C wait returns
                slice_s = 0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))
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
            "process_start": None,      # filled in by `kvmvm boot --json` (process_start_ms)
            "vm_created": rel(self.t_vm_created_ns),
            "first_kvm_run": rel(st["t_first_run_ns"]),
            "boot_signal": rel(st["t_boot_signal_ns"]),
            "end": rel(st["t_end_ns"]),
            "now": rel(time.monotonic_ns()),
        }

    def close(self) -> None:
        if self.prepared is not None:
            self.prepared.discard()
            self.prepared = None
        if self.vm is not None:
            self.vm.close()
            self.vm = None
        if self.kernel is not None:
            # the image mappings (and their file descriptors) go with the VM, not with this
            # object, which callers may keep for its results
            self._was_linux = self.kernel.is_linux
            self.kernel = self.kernel_data = self.initrd_data = None


def process_start_ms(t0_ns: int) -> float | None:
    """This process's start relative to t0_ns (CLOCK_MONOTONIC), in ms, to /proc's
    clock-tick resolution (10 ms); None when /proc cannot tell.

    /proc start times are compared with a thread started now, in the same units: /proc's
    ticks can be offset from CLOCK_BOOTTIME on some hosts, and the offset cancels out.
    """
    import _thread

    if not os.path.exists("/proc/self/stat"):     # a jail has no /proc
        return 0

    def ticks(path: str) -> int:
        with open(path) as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])

    box = {}
    done = _thread.allocate_lock()
    done.acquire()

    def probe():
        try:
            box["t"] = ticks(f"/proc/self/task/{_thread.get_native_id()}/stat")
        except (OSError, ValueError, IndexError):
            pass
        finally:
            done.release()

    try:
        _thread.start_new_thread(probe, ())
        done.acquire()
        age = box["t"] - ticks("/proc/self/stat")
    except (OSError, ValueError, IndexError, KeyError, RuntimeError):
        return None
    start = time.monotonic_ns() - age * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return round((start - t0_ns) / 1e6, 3)


def boot(cfg: MachineConfig) -> Result:
    """Boot `cfg` to the end and return how it ended (the Python API's one-call form)."""
    m = Machine(cfg)
    try:
        return m.run()
    finally:
        m.close()
