"""`kvmvm restore SNAPDIR`: run a microVM again from a snapshot, where it was."""

from __future__ import annotations

import os
import sys

import click

from kvmvm.errors import ConfigError


def parse_net_overrides(items) -> dict:
    out = {}
    for item in items:
        key, sep, tap = item.partition("=")
        if not sep or not key or not tap:
            raise ConfigError(f"--net-override {item!r}: expected IFACE=TAP (e.g. eth0=tap7)")
        out[key] = tap
    return out


@click.command("restore")
@click.argument("snapdir")
@click.option("--net-override", "net_override", multiple=True, metavar="IFACE=TAP",
              help="attach network device IFACE (ethN or its old TAP name) to another TAP")
@click.option("--vsock-uds", "vsock_uds", metavar="PATH", help="the vsock device's new Unix socket")
@click.option("--timeout", type=float, metavar="SECONDS", help="stop the VM after this long")
@click.option("--json", "as_json", is_flag=True, help="print the outcome as JSON at the end")
def cli(snapdir, net_override, vsock_uds, timeout, as_json):
    """Restore a snapshot and run it to its end, console on this terminal.

    Exit status: as `kvmvm boot`; 2 for a snapshot that cannot be restored here
    (missing, truncated, corrupt, another format version or CPU).
    """
    from kvmvm.console import attached_console
    from kvmvm.machine import Machine

    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be positive (got {timeout})")

    class Console:          # what attached_console fills in
        serial_in_fd = -1

    con = Console()
    with attached_console(con):
        m = Machine.restore(snapdir, net_override=parse_net_overrides(net_override),
                            vsock_uds=vsock_uds, serial_out_fd=1, serial_in_fd=con.serial_in_fd)
        m.cfg.timeout = timeout
        try:
            res = m.run()
        finally:
            m.close()
    res.timings_ms["restore_vmm"] = m.restore_vmm_ms
    if as_json:
        import json

        sys.stdout.flush()
        sys.stdout.write(json.dumps(res.to_dict()) + "\n")
    if res.outcome != "ok" or os.environ.get("KVMVM_VERBOSE") == "1":
        sys.stdout.flush()
        sys.stderr.write(f"kvmvm: {res.message}\n")
    return res.status
