"""What `kvmvm boot` does, without click: shared by the click command (kvmvm.cli.boot)
and the start-up fast path in kvmvm.cli.main."""

from __future__ import annotations

import os
import sys

# the default Linux command line: serial console, ACPI power-off/reset, a panic ends the VM
DEFAULT_LINUX_CMDLINE = ("console=ttyS0 8250.nr_uarts=1 reboot=acpi panic=-1 pci=off nomodule "
                         "i8042.noaux i8042.nomux tsc=reliable quiet")


def run(kernel, initrd, cmdline, memory, cpus, timeout, entry, use_bzimage, no_acpi, as_json,
        drives, nets, vsock, no_rng, virtio_cmdline) -> int:
    """`kvmvm boot` itself, called by the click command and by the fast path (kvmvm.cli)."""
    from kvmvm.cli import T0
    from kvmvm.console import attached_console
    from kvmvm.machine import Machine, MachineConfig

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
                        virtio_cmdline=virtio_cmdline)
    m = Machine(cfg, t0_ns=T0)
    try:
        with attached_console(cfg):
            res = m.run()
    finally:
        m.close()
    return report(res, as_json)


def report(res, as_json: bool) -> int:
    """The end of a run: JSON when asked, the outcome's line unless all went well."""
    if as_json:
        import json

        sys.stdout.flush()
        sys.stdout.write(json.dumps(res.to_dict()) + "\n")
    if res.outcome != "ok" or os.environ.get("KVMVM_VERBOSE") == "1":
        sys.stdout.flush()
        sys.stderr.write(f"kvmvm: {res.message}\n")
    return res.status


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
    from kvmvm.image import ensure_default

    art = ensure_default()
    return str(art.bzimage if use_bzimage else art.vmlinux), str(art.initramfs)
