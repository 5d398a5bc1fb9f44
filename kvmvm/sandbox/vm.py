"""A sandbox's VM: booted cold to "agent ready", or restored from that image's warm snapshot.

The first sandbox of an image (for a given kernel, initramfs, vCPUs and memory) boots
cold, stops once its agent has set up the container root, and saves a snapshot there (the
"template"), keyed by every input. Later sandboxes restore from it: the memory files are
mapped MAP_PRIVATE, so all sandboxes of an image share their pages copy-on-write. The
restore gives the VM a new VM generation ID (its kernel reseeds its RNG); the vsock
transport reset makes the agent connect again, and the host then sends it a new hostname,
the current time and fresh entropy. A VM is never reused for another sandbox.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path

from kvmvm.errors import SandboxError

TEMPLATE_FORMAT = "kvmvm-sandbox-template-1"
AGENT_TIMEOUT_S = float(os.environ.get("KVMVM_AGENT_TIMEOUT", "120"))
TEMPLATE_HOSTNAME = "sandbox"
RESTORE_CONNECT_TIMEOUT_S = float(os.environ.get("KVMVM_RESTORE_CONNECT_TIMEOUT", "60"))


def snapshot_root(home: Path | None = None) -> Path:
    from kvmvm.image.cache import kvmvm_home

    return (home or kvmvm_home()) / "sandbox-snapshots"


def _file_id(path) -> dict:
    st = os.stat(path)
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def template_key(img, cpus: int, memory_mib: int, kernel: Path, initrd: Path, disk_mib: int | None = None) -> str:
    """Everything a warm snapshot depends on; any change makes a new key."""
    from kvmvm.snapshot import format as fmt

    inputs = {"format": TEMPLATE_FORMAT, "snapshot_format": [fmt.FORMAT, fmt.VERSION],
              "kvmvm": fmt.kvmvm_version(), "image": img.digest, "rootfs": _file_id(img.rootfs),
              "rootfs_type": img.rootfs_type, "kernel": _file_id(kernel), "initrd": _file_id(initrd),
              "cpus": cpus, "memory_mib": memory_mib, "disk_mib": disk_mib, "host_cpu": fmt.host_cpu()}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def boot_artifacts() -> tuple[Path, Path]:
    """kvmvm's guest kernel and the agent initramfs (built or found in the cache)."""
    from kvmvm.agent import initramfs
    from kvmvm.image import ensure_default

    return Path(ensure_default().vmlinux), Path(initramfs.build())


class SandboxVm:
    """One running VM and its agent Session. close() stops it and removes its run directory."""

    def __init__(self, rundir, machine, session, console_fd: int, cvm=None, stack=None):
        self.rundir, self.machine, self.session = rundir, machine, session
        self.console_fd = console_fd
        self.cvm = cvm                  # the ContainerVm of a cold boot (it owns machine then)
        self.stack = stack              # helpers (passt) that end with the VM
        self.scratch: Path | None = None  # the scratch disk's image, when there is one
        self.warm = cvm is None
        self.timings: dict = {}
        self.dropped_connections = 0    # agent connections that ended before their HELLO

    def ended(self) -> bool:
        m = self.machine
        return m is None or m.vm is None or m.vm.wait(0) is not None

    def end_message(self) -> str:
        from kvmvm.machine import outcome_of

        m = self.machine
        stop = m.vm.wait(0) if m is not None and m.vm is not None else None
        return outcome_of(stop, None)[2] if stop is not None else "running"

    def console_tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = [ln for ln in Path(self.rundir.file("console.log")).read_text(errors="replace").splitlines()
                     if ln.strip()]
            if lines:
                return lines[-1].strip()[:200]
        return ""

    def close(self) -> None:
        if self.cvm is not None:
            with contextlib.suppress(Exception):
                self.cvm.close()
        else:
            if self.session is not None:
                self.session.close()
            if self.machine is not None:
                with contextlib.suppress(Exception):
                    self.machine.stop()
                    if self.machine.vm is not None:
                        self.machine.vm.wait(5)
                self.machine.close()
            if self.console_fd >= 0:
                os.close(self.console_fd)
        self.machine = None
        self.console_fd = -1
        if self.stack is not None:
            with contextlib.suppress(Exception):
                self.stack.close()
            self.stack = None
        self.rundir.close()


def reseed(session, hostname: str, timeout: float = 30.0) -> None:
    session.request("reseed", timeout=timeout, hostname=hostname, time_ns=time.time_ns(),
                    entropy=os.urandom(64).hex())


def make_scratch(path: Path, size_mib: int) -> None:
    """A sparse ext4 image of size_mib for the writable layer. No journal: the disk lives
    and dies with one VM, and an empty one is then a few hundred KiB on the host."""
    import subprocess

    try:
        with open(path, "wb") as f:
            f.truncate(size_mib << 20)
    except OSError as e:
        raise SandboxError(f"cannot make the {size_mib} MiB scratch disk: {path}: {e.strerror}") from None
    r = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
                        "-E", "lazy_itable_init=0,root_owner=0:0", str(path)],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        raise SandboxError(f"cannot make the {size_mib} MiB scratch disk: "
                           f"{(r.stderr.strip().splitlines() or ['mkfs.ext4 failed'])[-1]}")


def sparse_copy(src: Path, dst: Path) -> None:
    """Copy src to dst keeping holes (a scratch disk is mostly holes)."""
    fi = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fi).st_size
            off = 0
            while off < size:
                try:
                    data = os.lseek(fi, off, os.SEEK_DATA)
                except OSError:         # ENXIO: only a hole is left
                    break
                hole = os.lseek(fi, data, os.SEEK_HOLE)
                pos = data
                while pos < hole:
                    n = os.copy_file_range(fi, fo, hole - pos, pos, pos)
                    if n <= 0:
                        raise OSError(f"short copy of {src}")
                    pos += n
                off = hole
            os.ftruncate(fo, size)
        finally:
            os.close(fo)
    finally:
        os.close(fi)


def boot_cold(img, *, cpus: int, memory_mib: int, hostname: str, network: bool, rundir,
              template_dir: Path | None, disk_mib: int | None = None) -> SandboxVm:
    """Boot to agent ready; when template_dir is given, snapshot there first (the caller
    holds that template's build lock)."""
    from kvmvm.agent.guest import ContainerVm, VmFailed

    stack = contextlib.ExitStack()
    nets, extra = [], ""
    if network:
        # kvmvm run --net user's network: passt (started by the VM, ended with it) answers
        # DHCP, the kernel asks at boot, the agent writes the name servers it learnt
        nets, extra = ["user"], "ip=dhcp"
    scratch = None
    try:
        if disk_mib is not None:
            scratch = Path(rundir.file("scratch.img"))
            make_scratch(scratch, disk_mib)
    except BaseException:
        rundir.close()
        raise
    cvm = ContainerVm(rundir, rootfs=img.rootfs, rootfs_type=img.rootfs_type, memory_mib=memory_mib,
                      cpus=cpus, nets=nets, cmdline_extra=extra, scratch=scratch,
                      hostname=TEMPLATE_HOSTNAME if template_dir is not None else hostname)
    try:
        session = cvm.start(AGENT_TIMEOUT_S)
        cvm.machine.started = True      # (see _save_template) pause() snapshots it too
        if template_dir is not None:
            _save_template(cvm.machine, template_dir, scratch)
            reseed(session, hostname)
    except VmFailed as e:
        cvm.close()
        stack.close()
        raise SandboxError(f"the sandbox VM did not start: {e}") from None
    except BaseException:
        cvm.close()
        stack.close()
        raise
    vm = SandboxVm(rundir, cvm.machine, session, cvm.console_fd, cvm=cvm, stack=stack)
    vm.scratch = scratch
    vm.timings = cvm.timings()
    vm.dropped_connections = cvm.dropped_connections
    return vm


SCRATCH_FILE = "scratch.img"


def save_snapshot(machine, out: Path, scratch: Path | None) -> None:
    """Snapshot the VM (left paused) into out, with a copy of its scratch disk as it is now."""
    machine.snapshot(str(out))
    if scratch is not None:
        sparse_copy(scratch, out / SCRATCH_FILE)


def _save_template(machine, final: Path, scratch: Path | None = None) -> None:
    """Snapshot the paused-at-agent-ready VM into final (published by rename), then resume."""
    tmp = final.parent / f".tmp-{final.name}-{secrets.token_hex(4)}"
    # ContainerVm starts the vCPUs with machine.vm.start(): the Machine is running all the same
    machine.started = True
    try:
        save_snapshot(machine, tmp, scratch)
        (tmp / "template.json").write_text(json.dumps({"format": TEMPLATE_FORMAT, "created_unix": time.time()}))
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)   # another process published it first, or no room
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        machine.resume()


def template_ready(path: Path) -> bool:
    return (path / "template.json").is_file()


@contextlib.contextmanager
def build_lock(key_dir: Path):
    """Held while one process builds a template; others boot cold meanwhile (no waiting)."""
    key_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_dir.parent / f".{key_dir.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            got = True
        except BlockingIOError:
            got = False
        yield got
    finally:
        os.close(fd)


class Restored:
    """A VM restored from a template, not yet connected (a pool keeps these paused)."""

    def __init__(self, template: Path, rundir):
        from kvmvm.agent.protocol import VSOCK_PORT
        from kvmvm.machine import Machine

        self.rundir = rundir
        self.console_fd = -1
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.machine = None
        self.scratch = None
        try:
            self.console_fd = os.open(rundir.file("console.log"),
                                      os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            self.listener.bind(str(rundir.file(f"v_{VSOCK_PORT}")))
            self.listener.listen(1)
            drives = None
            if (template / SCRATCH_FILE).is_file():
                # this VM's own copy of the scratch disk as the snapshot saw it
                self.scratch = Path(rundir.file(SCRATCH_FILE))
                sparse_copy(template / SCRATCH_FILE, self.scratch)
                drives = _with_scratch(template, self.scratch)
            self.machine = Machine.restore(str(template), vsock_uds=str(rundir.file("v")),
                                           serial_out_fd=self.console_fd, drives=drives, start=False)
        except BaseException:
            self.discard()
            raise

    def connect(self, hostname: str, timeout: float = AGENT_TIMEOUT_S) -> SandboxVm:
        """Run the VM, accept its agent's new connection, reseed it."""
        from kvmvm.agent.accept import AgentTimeout, accept_agent
        from kvmvm.agent.protocol import ProtocolError
        from kvmvm.snapshot.persist import announce_genid

        t0 = time.monotonic_ns()
        session = None
        try:
            self.machine.start()
            announce_genid(self.machine)
            try:
                session, dropped = accept_agent(self.listener, timeout, self._check_alive)
                reseed(session, hostname, timeout)
            except (AgentTimeout, ProtocolError) as e:
                # the run directory goes with the failed restore: keep what the guest said
                from kvmvm.agent.guest import console_hint
                raise SandboxError(f"the restored sandbox's agent: {e}"
                                   f"{console_hint(self.rundir.file('console.log'), 5)}") from None
        except BaseException:
            if session is not None:
                session.close()
            self.discard()
            raise
        self.listener.close()
        vm = SandboxVm(self.rundir, self.machine, session, self.console_fd)
        vm.scratch = self.scratch
        vm.timings = {"restore_vmm_ms": getattr(self.machine, "restore_vmm_ms", None),
                      "connect_ms": round((time.monotonic_ns() - t0) / 1e6, 3)}
        vm.dropped_connections = dropped
        return vm

    def _check_alive(self) -> None:
        stop = self.machine.vm.wait(0)
        if stop is not None:
            from kvmvm.agent.guest import console_hint
            from kvmvm.machine import outcome_of

            raise SandboxError(f"the restored sandbox VM ended before its agent connected "
                               f"({outcome_of(stop, None)[2]})"
                               f"{console_hint(self.rundir.file('console.log'), 5)}")

    def discard(self) -> None:
        self.listener.close()
        if self.machine is not None:
            with contextlib.suppress(Exception):
                self.machine.stop()
            self.machine.close()
            self.machine = None
        if self.console_fd >= 0:
            os.close(self.console_fd)
            self.console_fd = -1
        self.rundir.close()


def _with_scratch(snap: Path, scratch: Path) -> list:
    """The snapshot's drive list with its scratch disk replaced by scratch."""
    from kvmvm.agent.guest import SCRATCH_ID
    from kvmvm.snapshot import format as fmt

    drives = json.loads((snap / fmt.HEADER_FILE).read_text())["config"].get("drives") or []
    out = [f"{scratch},id={SCRATCH_ID}" if d.endswith(f",id={SCRATCH_ID}") else d for d in drives]
    if out == drives:
        raise SandboxError(f"{snap}: a scratch disk file but no scratch drive in the snapshot")
    return out


def prune(home: Path | None = None) -> list[str]:
    """Remove every warm snapshot (VMs restored from them keep their mappings)."""
    root = snapshot_root(home)
    gone = []
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
                gone.append(d.name)
            elif d.name.endswith(".lock"):
                with contextlib.suppress(OSError):
                    d.unlink()
    return gone
