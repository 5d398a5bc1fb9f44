"""What `kvmvm restore` does, without click: shared by the click command
(kvmvm.cli.restore) and the start-up fast path in kvmvm.cli."""

from __future__ import annotations

from kvmvm.errors import ConfigError


def parse_net_overrides(items) -> dict:
    out = {}
    for item in items:
        key, sep, tap = item.partition("=")
        if not sep or not key or not tap:
            raise ConfigError(f"--net-override {item!r}: expected IFACE=TAP (e.g. eth0=tap7)")
        out[key] = tap
    return out


class _Console:
    """What attached_console fills in."""

    serial_in_fd = -1


def run(snapdir, net_override=(), vsock_uds=None, timeout=None, as_json=False) -> int:
    from kvmvm.cli.booting import report
    from kvmvm.console import attached_console
    from kvmvm.machine import Machine

    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be positive (got {timeout})")
    overrides = parse_net_overrides(net_override)
    con = _Console()
    with attached_console(con):
        m = Machine.restore(snapdir, net_override=overrides, vsock_uds=vsock_uds,
                            serial_out_fd=1, serial_in_fd=con.serial_in_fd)
        m.cfg.timeout = timeout
        try:
            res = m.run()
        finally:
            m.close()
    res.timings_ms["restore_vmm"] = m.restore_vmm_ms
    return report(res, as_json)
