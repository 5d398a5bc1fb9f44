"""`kvmvm boot`: boot a kernel in a fresh microVM, console on this terminal."""

from __future__ import annotations

import json
import os
import sys
import time

import click

T0 = time.monotonic_ns()


@click.command("boot")
@click.option("--kernel", "kernel", type=str, default=None,
              help="Kernel image (ELF vmlinux / PVH ELF, or bzImage). Default: kvmvm's own kernel.")
@click.option("--initrd", type=str, default=None, help="Initial ramdisk.")
@click.option("--cmdline", "--append", "cmdline", type=str, default=None, help="Kernel command line.")
@click.option("--memory", type=int, default=128, show_default=True, help="Guest RAM in MiB.")
@click.option("--cpus", type=int, default=1, show_default=True, help="Number of vCPUs.")
@click.option("--timeout", type=float, default=None, help="Stop the VM after this many seconds (exit 124).")
@click.option("--json", "as_json", is_flag=True, help="Print a final JSON object with the outcome.")
def cli(kernel, initrd, cmdline, memory, cpus, timeout, as_json):
    """Boot a microVM. Exit status: the guest's debug-exit status (v<<1)|1 when it used one;
    0 for reset, poweroff or halt; 1 when the VM failed; 124 on --timeout; 2 for bad input."""
    from kvmvm.machine import Machine, MachineConfig
    from kvmvm.console import attached_console

    if kernel is None:
        from kvmvm.errors import ConfigError
        raise ConfigError("--kernel is required (the default Linux kernel arrives with `kvmvm image build`)")
    cfg = MachineConfig(kernel=kernel, cmdline=cmdline or "", initrd=initrd, memory_mib=memory,
                        cpus=cpus, timeout=timeout)
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
