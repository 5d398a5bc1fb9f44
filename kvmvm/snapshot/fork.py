"""Forking a running Machine into n copy-on-write children.

The parent is paused; each RAM region is written once (sparsely) into a memfd, and the
parent and every child map that memfd MAP_PRIVATE: all share its pages, and each one's
writes stay its own. The vCPU/device state is saved once and loaded into each child.
Each child gets its own device backends (console fd, vsock socket, drives, TAP) and a new
VM generation ID, announced through the ACPI Generic Event Device so a Linux guest reseeds
its RNG (drivers/virt/vmgenid.c). Then everyone runs.
"""

from __future__ import annotations

import os
import threading
import time

from kvmvm.errors import ConfigError
from kvmvm.snapshot.persist import (CONFIG_FIELDS, announce_genid, apply_overrides, assemble,
                                    guest_is_linux, load, prepare_for)


def _child_config(m, k: int, *, serial_out_fd: int, serial_in_fd: int, vsock_uds: str | None, net_override: dict | None,
                  drives: list | None):
    from kvmvm.devices.virtio import parse_options
    from kvmvm.machine import MachineConfig

    cfgd = {f: getattr(m.cfg, f) for f in CONFIG_FIELDS}
    if cfgd["vsock"] and not vsock_uds:
        vsock_uds = f"{parse_options(cfgd['vsock'], '--vsock')['uds']}.{k + 1}"
    if cfgd["nets"] and not net_override:
        raise ConfigError("fork: children cannot share the parent's TAP; give net_override for each child")
    if drives is None:
        for spec in cfgd["drives"]:
            opts = parse_options(spec, "--drive", "path")
            if "ro" not in opts:
                raise ConfigError(f"fork: read-write drive {opts['path']} cannot be shared with a "
                                  f"child; give drives for each child (its own copy) or attach it ,ro")
    cfgd = apply_overrides(cfgd, net_override=net_override, vsock_uds=vsock_uds, drives=drives)
    cfg = MachineConfig(**cfgd, serial_out_fd=serial_out_fd, serial_in_fd=serial_in_fd,
                        kvm_path=m.cfg.kvm_path)
    cfg.validate()
    return cfg


class _Copy:
    """The paused machine m's RAM written into fds (one per region) and mapped back under
    it, on a thread; wait() joins it (raising what it raised) and returns when it ended."""

    def __init__(self, m, fds: list[int]):
        self.m, self.fds, self.error, self.t_end = m, fds, None, 0
        self.thread = threading.Thread(target=self._run, name="kvmvm-fork-copy", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for i, fd in enumerate(self.fds):
                self.m.vm.save_ram(i, fd)
                self.m.vm.remap_ram_file(i, fd)     # the parent shares the same pages from now on
        except BaseException as e:  # noqa: BLE001 - raised again by wait()
            self.error = e
        self.t_end = time.monotonic_ns()

    def wait(self) -> int:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.t_end


def fork(m, n: int, *, serial_out_fds: list[int] | None = None,
         serial_in_fds: list[int] | None = None, vsock_uds: list[str] | None = None,
         net_override: list[dict] | None = None, drives: list[list] | None = None) -> list:
    """n running children of the running Machine m (which keeps running). Per child, when
    given: its console output and input fds, vsock socket, TAP overrides and drive list.
    Sets m.fork_ms: memory (until the parent's memory is copied, from the call), total
    (until every child runs), per_child (what followed the copy, per child)."""
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"fork: n must be a positive number (got {n!r})")
    if m.vm is None or not m.started:
        raise ConfigError("fork: the machine is not running")
    for name, lst in (("serial_out_fds", serial_out_fds), ("serial_in_fds", serial_in_fds),
                      ("vsock_uds", vsock_uds),
                      ("net_override", net_override), ("drives", drives)):
        if lst is not None and len(lst) != n:
            raise ConfigError(f"fork: {name} must have one entry per child ({n})")
    cfgs = [_child_config(m, k,
                          serial_out_fd=serial_out_fds[k] if serial_out_fds else m.cfg.serial_out_fd,
                          serial_in_fd=serial_in_fds[k] if serial_in_fds else -1,
                          vsock_uds=vsock_uds[k] if vsock_uds else None,
                          net_override=net_override[k] if net_override else None,
                          drives=drives[k] if drives else None) for k in range(n)]
    linux = guest_is_linux(m)
    t0 = time.monotonic_ns()
    # every child's VM and memory slots made now on C threads, overlapping the parent's
    # memory copy below; its memfd then goes under each child's (untouched) RAM in place
    preps = [prepare_for(cfg, linux) for cfg in cfgs]
    fds, kids, paused_here = [], [], False
    try:
        if not m.paused:
            m.pause()
            paused_here = True
        state = m.vm.save_state()
        for i, _ in enumerate(m.ram.regions):
            fds.append(os.memfd_create(f"kvmvm-fork-ram{i}", os.MFD_CLOEXEC))
        # the parent's memory copied on a thread (the C calls let go of the GIL) while the
        # children are built here: nothing below touches their memory until it is done
        copy = _Copy(m, fds)
        try:
            for k in range(n):
                p, preps[k] = preps[k], None
                kids.append(assemble(type(m), cfgs[k], fds, None, None, what="fork", start=False,
                                     linux=linux, prepared=p))
        finally:
            t_mem = copy.wait()
        for kid in kids:
            load(kid, state, start=False)   # each child gets a new VM generation ID
        for kid in kids:
            kid.start()
            announce_genid(kid)
        t_end = time.monotonic_ns()
        m.fork_ms = {"memory": round((t_mem - t0) / 1e6, 3), "total": round((t_end - t0) / 1e6, 3),
                     "per_child": round((t_end - t_mem) / 1e6 / n, 3)}
    except BaseException:
        for kid in kids:
            kid.close()
        raise
    finally:
        for p in preps:
            if p is not None:
                p.discard()
        for fd in fds:
            os.close(fd)
        if paused_here:
            m.resume()
    return kids
