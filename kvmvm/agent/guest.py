"""A container microVM: kvmvm's kernel, the agent initramfs, the image's read-only root
filesystem, and a Session with the agent once it is up and has mounted everything.

    vm = ContainerVm(rundir, rootfs=img.rootfs, rootfs_type=img.rootfs_type, hostname="web")
    session = vm.start()            # boots, accepts the agent, sends setup
    st = session.exec([...], main=True)
    ...
    vm.close()                      # stops the VM if it still runs

The sandbox API and the OCI runtime build on this class too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvmvm.agent.accept import AgentTimeout, accept_agent
from kvmvm.agent.protocol import VSOCK_PORT, ProtocolError
from kvmvm.agent.session import AgentError, Session
from kvmvm.errors import KvmvmError

GUEST_CID = 3
AGENT_TIMEOUT_S = float(os.environ.get("KVMVM_AGENT_TIMEOUT", "120"))
# the default Linux command line minus its console chatter; the agent talks over vsock
CMDLINE = ("console=ttyS0 8250.nr_uarts=1 reboot=acpi panic=-1 pci=off nomodule i8042.noaux "
           "i8042.nomux tsc=reliable quiet loglevel=3")


class VmFailed(KvmvmError):
    """The container VM could not start or ended before its work was done."""


class Cancelled(VmFailed):
    """The owner gave up on the start (a signal arrived)."""


@dataclass
class Mount:
    """A disk the agent mounts at `target` (a named volume, a packed host directory)."""

    path: str
    fstype: str
    target: str
    readonly: bool = False
    direct: bool = False        # O_DIRECT on the host file (`,direct` drive option)


SCRATCH_ID = "kvmvm-scratch"      # the drive id (virtio serial) of a scratch disk


_OOPS = ("Kernel panic", "BUG:", "Oops", "general protection fault", "RIP:", "Call Trace:")


def console_hint(path, lines: int = 1) -> str:
    """"; console: " and the last `lines` non-blank lines of a VM's console log (200
    characters each, " | " between), or "" when there are none. A kernel's oops or panic
    report goes first, in its telling lines (the run directory holding the log is
    removed with the run, so this is all that is left of it)."""
    try:
        got = [ln.strip()[:200] for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    oops = [ln for ln in got if any(m in ln for m in _OOPS)][:6]
    tail = [ln for ln in got[-lines:] if ln not in oops]
    return f"; console: {' | '.join(oops + tail)}" if got else ""


@dataclass
class ContainerVm:
    rundir: object                          # kvmvm.agent.rundir.RunDir
    rootfs: Path
    rootfs_type: str
    memory_mib: int = 512
    cpus: int = 1
    mounts: list = field(default_factory=list)
    nets: list = field(default_factory=list)
    cmdline_extra: str = ""
    readonly: bool = False
    hostname: str = "kvmvm"
    hosts: str | None = None
    resolv: str | None = None
    t0_ns: int = 0
    scratch: Path | None = None             # an ext4 image for the writable layer (else a tmpfs)

    def __post_init__(self):
        self.machine = None
        self.session: Session | None = None
        self.dropped_connections = 0       # agent connections that ended before their HELLO
        self.listener: socket.socket | None = None
        self.console_fd = -1
        self.stop_info = None
        self.t = {}

    # --- start ---
    def _machine_config(self, kernel: str, initrd: str):
        from kvmvm.machine import MachineConfig

        drives = [f"{self.rootfs},ro,id=kvmvm-root"]
        for i, m in enumerate(self.mounts):
            drives.append(f"{m.path}{',ro' if m.readonly else ''}{',direct' if m.direct else ''},id=kvmvm-m{i}")
        if self.scratch is not None:
            drives.append(f"{self.scratch},id={SCRATCH_ID}")
        cmdline = CMDLINE + (" " + self.cmdline_extra if self.cmdline_extra else "")
        return MachineConfig(kernel=kernel, cmdline=cmdline, initrd=initrd, memory_mib=self.memory_mib,
                             cpus=self.cpus, serial_out_fd=self.console_fd, drives=drives,
                             nets=list(self.nets), vsock=f"cid={GUEST_CID},uds={self.rundir.file('v')}")

    def setup_message(self) -> dict:
        msg = {"rootfs": {"serial": "kvmvm-root", "type": self.rootfs_type},
               "readonly": self.readonly, "hostname": self.hostname,
               "mounts": [{"serial": f"kvmvm-m{i}", "type": m.fstype, "path": m.target, "ro": m.readonly}
                          for i, m in enumerate(self.mounts)]}
        if self.scratch is not None:
            msg["scratch"] = {"serial": SCRATCH_ID, "type": "ext4"}
        if self.hosts is not None:
            msg["hosts"] = self.hosts
        if self.resolv is not None:
            msg["resolv"] = self.resolv
        return msg

    def start(self, timeout: float = AGENT_TIMEOUT_S, cancelled=None) -> Session:
        from kvmvm.agent import initramfs
        from kvmvm.image import ensure_default
        from kvmvm.machine import Machine

        kernel = os.environ.get("KVMVM_GUEST_KERNEL") or str(ensure_default().vmlinux)
        initrd = initramfs.build()
        self.console_fd = os.open(self.rundir.file("console.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.listener.bind(str(self.rundir.file(f"v_{VSOCK_PORT}")))
        self.listener.listen(1)
        cfg = self._machine_config(kernel, str(initrd))
        self.machine = Machine(cfg, t0_ns=self.t0_ns or None)
        self.machine.build()
        self.machine.vm.start()
        self.t["vm_started"] = time.monotonic_ns()
        try:
            self.session, self.dropped_connections = accept_agent(
                self.listener, timeout, lambda: self._check_alive(cancelled))
            self.listener.close()
            self.listener = None
            self.t["agent_hello"] = self.session.t_hello_ns
            self.session.request("setup", timeout=timeout, **self.setup_message())
        except AgentTimeout as e:
            raise VmFailed(f"{e}{self._console_hint()}") from None
        except AgentError as e:
            raise VmFailed(f"the guest could not set up the container: {e.reason}") from None
        except ProtocolError as e:
            raise VmFailed(f"guest agent: {e}{self._console_hint()}") from None
        self.t["setup_done"] = time.monotonic_ns()
        return self.session

    def _check_alive(self, cancelled=None) -> None:
        """While waiting for the agent: raise if the start was cancelled or the VM ended."""
        if cancelled is not None and cancelled():
            raise Cancelled("start cancelled")
        if self.poll_end(0) is not None:
            raise VmFailed(f"the VM ended before its agent connected ({self.end_message()})"
                           f"{self._console_hint()}")

    def _console_hint(self) -> str:
        return console_hint(self.rundir.file("console.log"))

    # --- end ---
    def poll_end(self, timeout: float = 0):
        """The VM's StopInfo once it ended, else None (waits up to timeout)."""
        if self.stop_info is None and self.machine is not None and self.machine.vm is not None:
            self.stop_info = self.machine.vm.wait(timeout)
            if self.stop_info is not None:
                self.t["vm_end"] = self.machine.vm.stats()["t_end_ns"] or time.monotonic_ns()
        return self.stop_info

    def end_message(self) -> str:
        from kvmvm.machine import outcome_of

        return outcome_of(self.stop_info, None)[2] if self.stop_info else "running"

    def stop(self) -> None:
        """Stop the VM now (vCPUs end within the stop latency)."""
        if self.machine is not None and self.machine.vm is not None and self.stop_info is None:
            self.machine.vm.stop()
            self.poll_end(5)

    def shutdown(self, grace: float = 3.0) -> None:
        """After the main process ended: close the session (the agent powers off), wait a
        little for that, then stop the VM regardless."""
        if self.session is not None:
            self.session.close()
        if self.poll_end(grace) is None:
            self.stop()

    def timings(self) -> dict:
        """Phases on the host's monotonic clock, ms from t0: kernel start (first KVM_RUN),
        agent ready (its boot-timer write), hello, setup done, exec started, exit, VM gone."""
        out = {}
        if self.machine is not None and self.machine.vm is not None:
            st = self.machine.vm.stats()
            self.t.setdefault("kernel_start", st["t_first_run_ns"])
            self.t.setdefault("agent_ready", st["t_boot_signal_ns"])
        t0 = self.t0_ns or 0
        for k, v in self.t.items():
            if v:
                out[k] = round((v - t0) / 1e6, 3)
        return out

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.machine is not None:
            with contextlib.suppress(Exception):
                self.stop()
                self.timings()
            self.machine.close()
            self.machine = None
        if self.console_fd >= 0:
            os.close(self.console_fd)
            self.console_fd = -1
