"""Saving a running Machine to a snapshot directory and restoring one from it.

Save: pause (if not paused), state sections from the C core, each RAM region written
sparsely, the header last. Restore: check the snapshot (format.load), build the same
machine with its RAM mapped MAP_PRIVATE from the memory files (nothing read up front, page
cache shared by every VM restored from the same files), load the state, start.
"""

from __future__ import annotations

import errno
import os
import time

from kvmvm.errors import ConfigError
from kvmvm.snapshot import format as fmt

# MachineConfig fields a snapshot keeps (the rest belong to the process that restores),
# with the JSON types each may have (None: null allowed; list: a list of strings)
CONFIG_TYPES = {"kernel": (str, None), "cmdline": (str,), "initrd": (str, None),
                "memory_mib": (int,), "cpus": (int,), "drives": (list,), "nets": (list,),
                "vsock": (str, None), "rng": (bool,), "virtio_cmdline": (str,), "entry": (str,),
                "acpi": (bool,)}
CONFIG_FIELDS = tuple(CONFIG_TYPES)


def config_problem(cfgd: dict) -> str | None:
    """The first field of a snapshot's configuration that is missing or of the wrong type."""
    for k, types in CONFIG_TYPES.items():
        if k not in cfgd:
            return f"no {k!r}"
        v = cfgd[k]
        if v is None and None in types:
            continue
        ok = isinstance(v, tuple(t for t in types if t is not None))
        if ok and int in types:
            ok = not isinstance(v, bool)
        if ok and list in types:
            ok = all(isinstance(x, str) for x in v)
        if not ok:
            return f"{k!r} is a {type(v).__name__}"
    return None


def save(m, out_dir: str, *, resume: bool = False) -> fmt.Snapshot:
    if m.vm is None or not m.started:
        raise ConfigError("snapshot: the machine is not running")
    was_paused = m.paused
    if not was_paused:
        m.pause()
    t0 = time.monotonic_ns()
    try:
        os.makedirs(out_dir, exist_ok=True)
        hp = os.path.join(out_dir, fmt.HEADER_FILE)
        if os.path.exists(hp):
            os.unlink(hp)       # a half-rewritten directory must not look like a snapshot
        state = m.vm.save_state()
        with open(os.path.join(out_dir, fmt.STATE_FILE), "wb") as f:
            f.write(state)
        regions = []
        for i, (gpa, size) in enumerate(m.ram.regions):
            name = fmt.memory_file(i)
            fd = os.open(os.path.join(out_dir, name), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                written = m.vm.save_ram(i, fd)
            finally:
                os.close(fd)
            regions.append({"file": name, "gpa": gpa, "size": size, "data_bytes": written})
        header = {
            "format": fmt.FORMAT,
            "version": fmt.VERSION,
            "kvmvm_version": fmt.kvmvm_version(),
            "created_unix": time.time(),
            "host_cpu": fmt.host_cpu(),
            "guest_cpuid": [list(e) for e in m.vm.vcpu_cpuid(0)],
            "state": {"file": fmt.STATE_FILE, "size": len(state), "sha256": fmt.sha256(state)},
            "memory": regions,
            "config": {k: getattr(m.cfg, k) for k in CONFIG_FIELDS},
            "linux": guest_is_linux(m),
            "devices": [{"kind": s.name, "base": s.base, "irq": s.irq} for s in m.virtio],
        }
        fmt.write_header(out_dir, header)
        m.snapshot_ms = round((time.monotonic_ns() - t0) / 1e6, 3)
    finally:
        if resume:
            m.resume()
    return fmt.Snapshot(out_dir, header)


def guest_is_linux(m) -> bool:
    """Whether m runs a Linux guest (booted from a Linux kernel, or restored from one)."""
    k = getattr(m, "kernel", None)
    return bool(k.is_linux) if k is not None else bool(getattr(m, "restored_linux", False))


def apply_overrides(cfgd: dict, *, net_override: dict | None = None, vsock_uds: str | None = None,
                    drives: list | None = None) -> dict:
    """The snapshot's device specs with new backends: net_override maps ethN or netN (the
    N-th network device) or the old TAP name to a TAP; vsock_uds replaces the vsock socket path; drives replaces the list."""
    from kvmvm.devices.virtio import parse_options

    cfgd = dict(cfgd)
    if net_override:
        nets, used = [], set()
        for i, spec in enumerate(cfgd.get("nets") or []):
            opts = parse_options(spec, "--net", "tap")
            for key in (f"eth{i}", f"net{i}", opts.get("tap")):
                if key in net_override:
                    opts["tap"] = net_override[key]
                    used.add(key)
            nets.append(",".join(f"{k}={v}" if v else k for k, v in opts.items()))
        unknown = set(net_override) - used
        if unknown:
            raise ConfigError(f"--net-override: the snapshot has no network device {sorted(unknown)[0]!r}")
        cfgd["nets"] = nets
    if vsock_uds:
        if not cfgd.get("vsock"):
            raise ConfigError("--vsock-uds: the snapshot has no vsock device")
        opts = parse_options(cfgd["vsock"], "--vsock")
        opts["uds"] = vsock_uds
        cfgd["vsock"] = ",".join(f"{k}={v}" for k, v in opts.items())
    if drives is not None:
        if len(drives) != len(cfgd.get("drives") or []):
            raise ConfigError(f"restore: {len(drives)} drives given, the snapshot has "
                              f"{len(cfgd.get('drives') or [])}")
        cfgd["drives"] = list(drives)
    return cfgd


def announce_genid(m) -> None:
    """An edge on the ACPI Generic Event Device: the guest re-reads its VM generation ID
    (Linux's vmgenid driver then reseeds its RNG)."""
    from kvmvm.boot import layout

    if m.vm.caps.irqchip:
        m.vm.irq_line(layout.VMGENID_GED_IRQ, 1)
        m.vm.irq_line(layout.VMGENID_GED_IRQ, 0)


def assemble(cls, cfg, ram_fds: list[int], state: bytes | None, guest_cpuid: list | None, *,
             what: str, start: bool, new_genid: bool = True, linux: bool = False,
             prepared=None, t0_ns: int | None = None):
    """A Machine of class cls with cfg's devices, RAM from ram_fds and the given state; a
    new VM generation ID unless new_genid is false (every copy is a new VM to its guest).
    prepared: a kvmvm.prepared.PreparedVm for it (prepare_for), started earlier; t0_ns:
    when the caller began (restore_vmm_ms counts from it). state None: built without
    touching guest memory (ram_fds may still be being written), for load() to finish."""
    from kvmvm.boot import layout

    m = cls.__new__(cls)
    m.cfg = cfg
    m.t0_ns = t0_ns or time.monotonic_ns()
    m.vm = None
    m.virtio = []
    m.t_vm_created_ns = 0
    m.ram = layout.RamLayout(cfg.memory_mib * layout.MiB)
    m.kernel = m.kernel_data = m.initrd_data = None
    m.prepared = prepared
    m.restored_linux = m._was_linux = linux      # (Machine.is_linux without a kernel)
    try:
        m._build_platform(ram_fds)
        m.vm.create_vcpus(cfg.cpus)
        if guest_cpuid is not None:
            check_cpuid(what, guest_cpuid, m.vm.vcpu_cpuid(0))
        if state is not None:
            load(m, state, start=start, new_genid=new_genid, what=what)
    except BaseException:
        m.close()
        raise
    return m


def load_state(vm, state: bytes, what: str) -> None:
    """vm.load_state, with a stream the C loader refuses as malformed, inconsistent or
    for other devices (EBADMSG, EPROTO, ENODEV) reported as the bad input it is."""
    from kvmvm.errors import KvmError
    try:
        vm.load_state(state)
    except KvmError as e:
        if e.errno in (errno.EBADMSG, errno.EPROTO, errno.ENODEV):
            raise fmt.SnapshotError(f"cannot restore {what}: its state file is invalid ({e})") from None
        raise


def load(m, state: bytes, *, start: bool, new_genid: bool = True, what: str = "the snapshot") -> None:
    """Finish a Machine that assemble built without state: the state, a new VM generation
    ID unless new_genid is false, and (if start) its vCPUs running. On an error the caller
    closes m."""
    from kvmvm.boot import layout

    load_state(m.vm, state, what)
    if new_genid:
        m.vm.write(layout.VMGENID_GPA, os.urandom(16))
    if start:
        m.start()
        if new_genid:
            announce_genid(m)
    m.restore_vmm_ms = round((time.monotonic_ns() - m.t0_ns) / 1e6, 3)


def prepare_for(cfg, linux: bool):
    """A kvmvm.prepared.PreparedVm for a Machine that assemble will build from cfg: the VM
    and its memory slots made on a C thread (the kernel makes each slot wait for an SRCU
    grace period, milliseconds), overlapping whatever the caller does meanwhile."""
    from kvmvm.boot import layout
    from kvmvm.prepared import PreparedVm

    pit = cfg.pit == "on" or (cfg.pit == "auto" and linux)
    return PreparedVm(cfg.kvm_path, layout.RamLayout(cfg.memory_mib * layout.MiB).regions, pit,
                      cfg.seccomp_level)


def check_cpuid(what: str, saved: list, now: list) -> None:
    a = {(e[0], e[1]): tuple(e[2:]) for e in saved}
    b = {(e[0], e[1]): tuple(e[2:]) for e in now}
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            raise fmt.SnapshotError(f"cannot restore {what}: the guest's CPUID differs on this host "
                                    f"(leaf {key[0]:#x} index {key[1]}): other CPU features")


def check(snap_dir: str, *, net_override=None, vsock_uds=None, serial_out_fd: int = 1,
          serial_in_fd: int = -1, drives=None):
    """Everything restore checks in a snapshot before it builds anything: the header
    (format.load), the configuration with its overrides, and the memory regions against
    that configuration. Returns (snapshot, state bytes, MachineConfig); a snapshot that
    cannot be restored raises SnapshotError (or ConfigError for a bad override)."""
    from kvmvm.boot import layout
    from kvmvm.machine import MachineConfig

    snap, state = fmt.load(snap_dir)
    why = config_problem(snap.config)
    if why:
        raise fmt.SnapshotError(f"cannot restore {snap_dir}: corrupt configuration in the header ({why})")
    cfgd = apply_overrides(snap.config, net_override=net_override, vsock_uds=vsock_uds,
                           drives=drives)
    try:
        cfg = MachineConfig(**{k: cfgd[k] for k in CONFIG_FIELDS},
                            serial_out_fd=serial_out_fd, serial_in_fd=serial_in_fd)
        cfg.validate()
    except (KeyError, TypeError) as e:
        raise fmt.SnapshotError(f"cannot restore {snap_dir}: corrupt configuration in the header ({e})") from None
    if [(r["gpa"], r["size"]) for r in snap.regions] != layout.RamLayout(cfg.memory_mib << 20).regions:
        raise fmt.SnapshotError(f"cannot restore {snap_dir}: memory regions do not match the "
                                f"configuration (corrupt header)")
    return snap, state, cfg


def restore(cls, snap_dir: str, *, net_override=None, vsock_uds=None, serial_out_fd: int = 1,
            serial_in_fd: int = -1, drives=None, start: bool = True):
    t0 = time.monotonic_ns()
    snap, state, cfg = check(snap_dir, net_override=net_override, vsock_uds=vsock_uds,
                             serial_out_fd=serial_out_fd, serial_in_fd=serial_in_fd, drives=drives)
    if snap.header.get("linux"):
        from kvmvm.host import linux_guest_problem

        problem = linux_guest_problem(cfg.kvm_path)
        if problem:
            from kvmvm.errors import HostUnsupported

            raise HostUnsupported(problem)
    linux = bool(snap.header.get("linux"))
    prep, fds = prepare_for(cfg, linux), []
    try:
        for i in range(len(snap.regions)):
            fds.append(os.open(snap.memory_path(i), os.O_RDONLY | os.O_CLOEXEC))
        p, prep = prep, None
        return assemble(cls, cfg, fds, state, snap.header.get("guest_cpuid"), what=snap_dir,
                        start=start, linux=linux, prepared=p, t0_ns=t0)
    finally:
        if prep is not None:
            prep.discard()
        for fd in fds:
            os.close(fd)
