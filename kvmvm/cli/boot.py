"""`kvmvm boot`: boot a kernel in a fresh microVM, console on this terminal."""

from __future__ import annotations

import json
import os
import sys
import time

import click

T0 = time.monotonic_ns()

# the default Linux command line: serial console, ACPI power-off/reset, a panic ends the VM
DEFAULT_LINUX_CMDLINE = ("console=ttyS0 8250.nr_uarts=1 reboot=acpi panic=-1 pci=off nomodule "
                         "i8042.noaux i8042.nomux tsc=reliable quiet")


@click.command("boot")
@click.option("--kernel", "kernel", type=str, default=None,
              help="Kernel image (ELF vmlinux / PVH ELF, or bzImage). Default: kvmvm's own kernel.")
@click.option("--initrd", type=str, default=None,
              help="Initial ramdisk. Default with the default kernel: kvmvm's initramfs.")
@click.option("--cmdline", "--append", "cmdline", type=str, default=None, help="Kernel command line.")
@click.option("--memory", type=int, default=128, show_default=True, help="Guest RAM in MiB.")
@click.option("--cpus", type=int, default=1, show_default=True, help="Number of vCPUs.")
@click.option("--timeout", type=float, default=None, help="Stop the VM after this many seconds (exit 124).")
@click.option("--entry", type=click.Choice(["auto", "pvh", "64"]), default="auto", show_default=True,
              help="ELF entry: PVH note, or the 64-bit entry with boot_params.")
@click.option("--bzimage", "use_bzimage", is_flag=True, help="Default kernel: boot the bzImage, not vmlinux.")
@click.option("--no-acpi", is_flag=True, help="Give the guest no ACPI tables.")
@click.option("--json", "as_json", is_flag=True, help="Print a final JSON object with the outcome.")
@click.option("--drive", "drives", multiple=True, metavar="PATH[,ro]",
              help="virtio-blk raw image (repeatable; the first is /dev/vda).")
@click.option("--net", "nets", multiple=True, metavar="tap=NAME[,mac=MAC]", help="virtio-net over a TAP (repeatable).")
@click.option("--vsock", default=None, metavar="cid=N,uds=PATH", help="virtio-vsock, Firecracker-style host UDS.")
@click.option("--no-rng", is_flag=True, help="No virtio-rng device.")
@click.option("--no-virtio-cmdline", is_flag=True,
              help="List virtio devices only in the ACPI DSDT, not as virtio_mmio.device= on the command line.")
def cli(kernel, initrd, cmdline, memory, cpus, timeout, entry, use_bzimage, no_acpi, as_json,
        drives, nets, vsock, no_rng, no_virtio_cmdline):
    """Boot a microVM.

    Exit status: the guest's debug-exit status (v<<1)|1 when it used one; 0 for reset,
    poweroff or halt; 1 when the VM failed (triple fault, KVM error); 3 when the guest
    kernel panicked; 124 on --timeout; 130 when interrupted; 2 for bad input.
    """
    from kvmvm.console import attached_console
    from kvmvm.machine import Machine, MachineConfig

    if kernel is None:
        kernel, default_initrd = _default_kernel(use_bzimage)
        initrd = initrd or default_initrd
        if cmdline is None:
            cmdline = DEFAULT_LINUX_CMDLINE
    cfg = MachineConfig(kernel=kernel, cmdline=cmdline or "", initrd=initrd, memory_mib=memory,
                        cpus=cpus, timeout=timeout, entry=entry, acpi=not no_acpi,
                        drives=list(drives), nets=list(nets), vsock=vsock, rng=not no_rng,
                        virtio_cmdline=not no_virtio_cmdline)
    m = Machine(cfg, t0_ns=T0)
    try:
        with attached_console(cfg):
            res = m.run()
    finally:
        m.close()
    if as_json:
        sys.stdout.flush()
        click.echo(json.dumps(res.to_dict()))
    if res.outcome != "ok":
        click.echo(f"kvmvm: {res.message}", err=True)
    elif os.environ.get("KVMVM_VERBOSE") == "1":
        click.echo(f"kvmvm: {res.message}", err=True)
    return res.status


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
