"""What `kvmvm boot` does, without click: shared by the click command (kvmvm.cli.boot)
and the start-up fast path in kvmvm.cli.main."""

from __future__ import annotations

import os
import sys

# the default Linux command line: serial console, ACPI power-off/reset, a panic ends the VM
DEFAULT_LINUX_CMDLINE = ("console=ttyS0 8250.nr_uarts=1 reboot=acpi panic=-1 pci=off nomodule "
                         "i8042.noaux i8042.nomux tsc=reliable quiet")


def run(kernel, initrd, cmdline, memory, cpus, timeout, entry, use_bzimage, no_acpi, as_json,
        drives, nets, vsock, no_rng, virtio_cmdline, pit="auto", seccomp_level="2", jail=False,
        jail_uid=None, jail_gid=None, jail_netns=None, jail_memory=None, jail_pids=None,
        jail_cpu=None, jail_probe=None, api_sock=None) -> int:
    """`kvmvm boot` itself, called by the click command and by the fast path (kvmvm.cli)."""
    # first: its kernel waits overlap everything below (the default kernel is Linux: a PIT);
    # never for a jailed VM, whose /dev/kvm is opened inside the jail
    prepared = None if jail else _prepare_vm(memory, pit == "on" or (kernel is None and pit == "auto"),
                                             seccomp_level)
    from kvmvm.machine import MachineConfig

    if kernel is None:
        kernel, default_initrd = _default_kernel(use_bzimage)
        initrd = initrd or default_initrd
        if cmdline is None:
            cmdline = DEFAULT_LINUX_CMDLINE
        if not _stdin_is_tty():      # kvmvm's init then reads the commands from a pipe
            cmdline += " kvmvm.console=pipe"
    cfg = MachineConfig(kernel=kernel, cmdline=cmdline or "", initrd=initrd, memory_mib=memory,
                        cpus=cpus, timeout=timeout, entry=entry, acpi=not no_acpi,
                        drives=list(drives), nets=list(nets), vsock=vsock, rng=not no_rng,
                        virtio_cmdline=virtio_cmdline, pit=pit, seccomp_level=int(seccomp_level),
                        # the main thread is filtered too, unless it serves the API (its
                        # server threads write snapshots, and closing it needs shutdown())
                        seccomp_main=not api_sock)
    if not jail:
        return _boot(cfg, as_json, prepared=prepared, api_sock=api_sock)
    if api_sock:
        from kvmvm.errors import ConfigError

        raise ConfigError("--api-sock cannot be combined with --jail yet")
    from kvmvm.jail import JailConfig, run as run_jailed
    from kvmvm.machine import Machine

    Machine(cfg).close()    # bad input and unsupported hosts: reported here, outside the jail
    jc = JailConfig(netns=jail_netns, memory_mib=jail_memory, cpus=jail_cpu, probe=jail_probe)
    if jail_uid is not None:
        jc.uid = jail_uid
    if jail_gid is not None:
        jc.gid = jail_gid
    if jail_pids is not None:
        jc.pids = jail_pids
    return run_jailed(cfg, jc, lambda c, after_build: _boot(c, as_json, after_build))


def _boot(cfg, as_json: bool, after_build=None, prepared=None, api_sock=None) -> int:
    """Build and run one VM with the console on this terminal; the exit status."""
    from kvmvm.cli import T0
    from kvmvm.console import attached_console
    from kvmvm.machine import Machine

    m = Machine(cfg, t0_ns=T0, prepared=prepared)
    api = None
    try:
        with attached_console(cfg):
            if after_build is not None:
                m.build()
                after_build()
            if api_sock:
                from kvmvm.api import serve_machine

                api = serve_machine(api_sock, m)[0]
            m.start()
            import gc

            gc.enable()     # off for the start-up (bin/kvmvm); a long run needs it
            res = m.run()
    finally:
        if api is not None:
            api.close()
        m.close()
    return report(res, as_json)


def report(res, as_json: bool) -> int:
    """The end of a run: JSON when asked, the outcome's line unless all went well."""
    from kvmvm.cli import T0

    out, err = sys.stdout, sys.stderr     # None when the process started with them closed
    if as_json and out is not None:
        import time

        from kvmvm.machine import process_start_ms

        res.timings_ms["closed"] = round((time.monotonic_ns() - T0) / 1e6, 3)   # VM torn down
        res.timings_ms["process_start"] = process_start_ms(T0)
        out.flush()
        out.write(json_line(res.to_dict()) + "\n")
    if (res.outcome != "ok" or os.environ.get("KVMVM_VERBOSE") == "1") and err is not None:
        if out is not None:
            out.flush()
        err.write(f"kvmvm: {res.message}\n")
    return res.status


def json_line(v) -> str:
    """v (dicts, lists, strings, numbers, booleans, None) as one line of JSON, the same text
    as json.dumps(v). Not the json module: with the `re` it imports, it cost more start-up
    than the rest of `kvmvm boot --json` and its timings would have measured it; and a C
    extension (_json) could not be loaded once the main thread's seccomp filter is on."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return _json_str(v)
    if isinstance(v, int):
        return int.__repr__(v)
    if isinstance(v, float):
        if v != v:
            return "NaN"
        if v in (float("inf"), float("-inf")):
            return "Infinity" if v > 0 else "-Infinity"
        return float.__repr__(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_json_str(str(k) if not isinstance(k, str) else k)}: {json_line(x)}"
                               for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(json_line(x) for x in v) + "]"
    raise TypeError(f"Object of type {type(v).__name__} is not JSON serializable")


_JSON_ESC = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _json_str(s: str) -> str:
    """A JSON string, ASCII only (json.dumps's ensure_ascii)."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return '"' + s + '"'
    out = []
    for ch in s:
        c = ord(ch)
        if ch in _JSON_ESC:
            out.append(_JSON_ESC[ch])
        elif 0x20 <= c < 0x7F:
            out.append(ch)
        elif c <= 0xFFFF:
            out.append(f"\\u{c:04x}")
        else:
            c -= 0x10000
            out.append(f"\\u{0xD800 | (c >> 10):04x}\\u{0xDC00 | (c & 0x3FF):04x}")
    return '"' + "".join(out) + '"'


def _prepare_vm(memory, pit: bool, seccomp_level="2"):
    """Start creating the VM and its RAM, and compiling the seccomp filters
    (kvmvm.prepared.PreparedVm); None if anything is off (Machine then reports it the usual way)."""
    try:
        from kvmvm.boot.layout import MiB, RamLayout
        from kvmvm.prepared import PreparedVm

        level = int(seccomp_level) if str(seccomp_level) in ("0", "1", "2") else 0
        return PreparedVm("/dev/kvm", RamLayout(memory * MiB).regions, pit, level)
    except Exception:  # noqa: BLE001 - bad input is reported by Machine
        return None


def _stdin_is_tty() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, ValueError, OSError):
        return False


def _default_kernel(use_bzimage: bool) -> tuple[str, str]:
    """kvmvm's own kernel + initramfs, built on first use (with progress on a terminal)."""
    from kvmvm.host import linux_guest_problem

    problem = linux_guest_problem()
    if problem:  # say so before spending minutes on a kernel build
        from kvmvm.errors import HostUnsupported

        raise HostUnsupported(problem)
    from kvmvm.image.index import lookup

    hit = lookup()      # a few stat() calls when nothing changed since the last build
    if hit:
        return hit["bzimage" if use_bzimage else "vmlinux"], hit["initramfs"]
    from kvmvm.image import ensure_default

    art = ensure_default()
    return str(art.bzimage if use_bzimage else art.vmlinux), str(art.initramfs)
