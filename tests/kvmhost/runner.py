"""Boot the L1 (QEMU TCG emulating AMD SVM), run one command in it, tear it down.

The host talks to L1's init through a small 9p "control" share in a temporary directory:
``shares.sh`` (which host directories to mount read-write), ``cmd.sh`` (cwd, environment,
command), ``out`` (the command's stdout and stderr, read live by the host) and ``status``.
Kernel and init messages go to a console log, never into the command's output.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Mapping, Sequence

from .image import Image, KvmhostError, kvmvm_home, prepare

QEMU = "qemu-system-x86_64"
DEFAULT_MEM = 6144
DEFAULT_CPUS = 2
TIMEOUT_STATUS = 124
RUN_PREFIX = "kvmhost-run-"
# Host variables that reach the command unchanged (everything else starts clean).
FORWARD = re.compile(r"^(CI|KVMVM_\w+|PYTEST_\w+|PYTHON(DONTWRITEBYTECODE|HASHSEED|WARNINGS|DEVMODE|FAULTHANDLER)|"
                     r"TZ|LANG|LC_\w+|TERM|NO_COLOR|FORCE_COLOR|VIRTUAL_ENV)$")
# pci=noacpi: legacy IRQ routing; ACPI's link setup costs ~0.3 s per 9p device under TCG.
# cryptomgr.notests: the crypto self-tests cost ~0.6 s under TCG.
# nokaslr: the kernel addresses a frozen L1's saved registers show are the same in every boot
# (`python -m tests.kvmhost run -- cat /proc/kallsyms` resolves them).
KERNEL_ARGS = "console=ttyS0 panic=-1 quiet mitigations=off pci=noacpi cryptomgr.notests nokaslr"
DEBUG = bool(os.environ.get("KVMHOST_DEBUG"))  # L1's console (kernel, init) to stderr, timestamped
# init.sh beats every 10 s from memory; no beat for this long means L1 itself is frozen
# (seen under QEMU's multi-threaded TCG: the vCPUs spin, nothing in L1 runs, not even timers).
DEFAULT_STALL = 90.0
# QEMU's TCG threading: "multi" (one host thread per L1 vCPU) or "single" (round-robin)
TCG_THREAD = os.environ.get("KVMHOST_TCG_THREAD", "multi")


@dataclass
class RunResult:
    """What came back from L1: the command's exit status and its combined stdout/stderr."""
    status: int
    output: str
    ready_s: float | None  # seconds from QEMU start until L1 had /dev/kvm and its mounts
    total_s: float
    timed_out: bool = False
    stalled: str | None = None  # where the state of a frozen (heartbeat stopped) or crashed L1 was kept


def _pdeathsig() -> None:
    # QEMU dies with us even if we are SIGKILLed: no orphaned L1.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_run_dirs() -> None:
    """Remove run directories left by a kvmhost that was SIGKILLed."""
    for d in Path(tempfile.gettempdir()).glob(RUN_PREFIX + "*"):
        m = re.match(re.escape(RUN_PREFIX) + r"(\d+)-", d.name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)


def _qemu_opt(path: Path | str) -> str:
    return str(path).replace(",", ",,")


def _guest_env(cwd: Path, image: Image, extra: Mapping[str, str] | None) -> dict[str, str]:
    home = os.environ.get("HOME") or str(Path.home())
    path = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    venv = os.environ.get("VIRTUAL_ENV") or (str(cwd / ".venv") if (cwd / ".venv/bin").is_dir() else None)
    if venv:
        path.insert(0, f"{venv}/bin")
    env = {k: v for k, v in os.environ.items() if FORWARD.match(k)}
    env.update({
        "PATH": ":".join(path), "HOME": home, "USER": "root", "LOGNAME": "root", "TMPDIR": "/tmp",
        "LANG": os.environ.get("LANG", "C.UTF-8"), "KVMVM_HOME": str(kvmvm_home()),
        "PYTHONUNBUFFERED": "1", "KVMHOST_INSIDE": "1", "KVMHOST_L1_DIR": str(image.dir),
    })
    if venv:
        env["VIRTUAL_ENV"] = venv
    env.update(extra or {})
    return env


def _shares(paths: Sequence[Path]) -> list[Path]:
    """Distinct directories to share read-write, parents first, none inside another."""
    out: list[Path] = []
    for p in sorted({Path(os.path.realpath(p)) for p in paths}, key=lambda p: len(p.parts)):
        if not p.is_dir():
            raise KvmhostError(f"cannot share {p}: not a directory")
        if p == Path("/"):
            raise KvmhostError("refusing to share / read-write (run from the checkout, not /)")
        if not any(p == q or q in p.parents for q in out):
            out.append(p)
    return out


def run(cmd: Sequence[str], *, timeout: float | None = None, mem: int = DEFAULT_MEM, cpus: int = DEFAULT_CPUS,
        env: Mapping[str, str] | None = None, cwd: str | Path | None = None, shares: Sequence[str | Path] = (),
        stream: BinaryIO | None = None, log: Callable[[str], None] | None = None,
        image: Image | None = None, stall: float | None = DEFAULT_STALL) -> RunResult:
    """Run ``cmd`` inside a fresh L1 with the host root (ro), ``cwd`` and KVMVM_HOME (rw) mounted.

    Returns the command's exit status (``TIMEOUT_STATUS`` and ``timed_out`` when ``timeout``
    seconds passed first) and its output; ``stream`` gets the output live. When L1's heartbeat
    stops for ``stall`` seconds, L1 is frozen: its state is saved (``stalled`` says where) and it
    is killed, with ``TIMEOUT_STATUS``. Raises
    :class:`KvmhostError` when L1 itself cannot run the command.
    """
    say = log or (lambda msg: None)
    if not cmd:
        raise KvmhostError("no command given")
    qemu = shutil.which(QEMU)
    if not qemu:
        raise KvmhostError(f"{QEMU} not found (scripts/setup.sh installs it)")
    image = image or prepare(say)
    cwd = Path(os.path.realpath(cwd or os.getcwd()))
    home = kvmvm_home()
    home.mkdir(parents=True, exist_ok=True)
    share_dirs = _shares([cwd, home, *map(Path, shares)])

    _clean_stale_run_dirs()
    rundir = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-"))
    proc: subprocess.Popen | None = None
    try:
        ctl = rundir / "ctl"
        ctl.mkdir()
        (ctl / "shares.sh").write_text("".join(f"share share{i} {shlex.quote(str(p))}\n"
                                               for i, p in enumerate(share_dirs)))
        genv = _guest_env(cwd, image, env)
        (ctl / "cmd.sh").write_text(
            "exec 3<&-\n"
            f"cd {shlex.quote(str(cwd))} || exit 125\n"
            "exec /usr/bin/env -i " + " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(genv.items()))
            + " " + " ".join(shlex.quote(a) for a in cmd) + "\n")
        console = rundir / "console.log"
        qemu_log = rundir / "qemu.log"
        args = _qemu_args(qemu, image, mem, cpus, console, ctl, share_dirs)

        start = time.monotonic()
        with open(qemu_log, "wb") as qlog:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_pdeathsig)
        return _supervise(proc, start, rundir, timeout, stream, say, stall)
    finally:
        # A second Ctrl-C / SIGTERM must not cut the teardown short.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            shutil.rmtree(rundir, ignore_errors=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _qemu_args(qemu: str, image: Image, mem: int, cpus: int, console: Path, ctl: Path,
               share_dirs: list[Path]) -> list[str]:
    kernel = image.vmlinux or image.kernel
    append = (KERNEL_ARGS.replace(" quiet", "") if DEBUG else KERNEL_ARGS) + " " + os.environ.get("KVMHOST_APPEND", "")
    args = [
        qemu, "-accel", f"tcg,thread={TCG_THREAD}", "-cpu", "qemu64,+svm,+npt", "-m", str(mem), "-smp", str(cpus),
        "-M", "pc", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{_qemu_opt(console)}",
        "-monitor", f"unix:{_qemu_opt(console.with_name('monitor'))},server=on,wait=off",
        "-kernel", str(kernel), "-initrd", str(image.initrd), "-append", append.strip(),
    ]
    exports = [("hostroot", Path("/"), True), ("kvmhostctl", ctl, False)]
    exports += [(f"share{i}", p, False) for i, p in enumerate(share_dirs)]
    for tag, path, ro in exports:
        args += ["-fsdev", f"local,id={tag},path={_qemu_opt(path)},security_model=none,multidevs=remap"
                           + (",readonly=on" if ro else ""),
                 "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]
    args += shlex.split(os.environ.get("KVMHOST_QEMU_ARGS", ""))  # debugging aid
    return args


class _Tail:
    """Reads what was appended to a file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path, self.pos = path, 0

    def read(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return b""
        self.pos += len(data)
        return data


def _supervise(proc: subprocess.Popen, start: float, rundir: Path, timeout: float | None,
               stream: BinaryIO | None, say: Callable[[str], None], stall: float | None = None) -> RunResult:
    console, out = _Tail(rundir / "console.log"), _Tail(rundir / "ctl" / "out")
    chunks: list[bytes] = []
    pending = b""
    ready_s: float | None = None
    error: str | None = None
    status: int | None = None
    status_at: float | None = None
    timed_out = False
    stalled: str | None = None
    beat_at: float | None = None

    def pump() -> None:
        nonlocal stream
        data = out.read()
        if data:
            chunks.append(data)
            if stream is not None:
                try:
                    stream.write(data)
                    stream.flush()
                except (BrokenPipeError, ValueError):  # reader went away: keep collecting
                    stream = None

    while True:
        pending += console.read()
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            if DEBUG:
                say(f"[{time.monotonic() - start:6.2f}] {line}")
            if not line.startswith("@@kvmhost "):
                continue
            word, _, rest = line[len("@@kvmhost "):].partition(" ")
            if word in ("ready", "beat"):
                beat_at = time.monotonic()
            if word == "ready" and ready_s is None:
                ready_s = time.monotonic() - start
                say(f"kvmhost: L1 ready in {ready_s:.1f} s (guest uptime {rest} s)")
            elif word == "error":
                error = rest
            elif word == "keeper" and rest != "keys pinned":    # init.sh: a freeze more likely
                say(f"kvmhost: L1 could not pin KVM's static keys: {rest}")
            elif word == "status":
                status, status_at = int(rest), time.monotonic()
        pump()
        now = time.monotonic()
        if proc.poll() is not None:
            break
        if timeout is not None and now - start > timeout:
            timed_out = True
            break
        if status_at is not None and now - status_at > 10:  # powered off too slowly: enough
            break
        if stall and beat_at is not None and status_at is None and now - beat_at > stall:
            stalled = _save_stall(proc, rundir, now - beat_at)
            say(f"kvmhost: L1 froze: no heartbeat for {now - beat_at:.0f} s; its state is in {stalled}")
            timed_out = True
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    pump()
    total = time.monotonic() - start
    output = b"".join(chunks).decode(errors="replace")
    if timed_out:
        return RunResult(TIMEOUT_STATUS, output, ready_s, total, timed_out=True, stalled=stalled)
    status_file = rundir / "ctl" / "status"
    if status_file.is_file() and status_file.read_text().strip():
        status = int(status_file.read_text().strip())
    if status is not None:
        return RunResult(status, output, ready_s, total)
    if error:
        raise KvmhostError(error)
    qemu_msg = (rundir / "qemu.log").read_text(errors="replace").strip().splitlines()
    if proc.returncode != 0 and qemu_msg:
        raise KvmhostError(f"qemu failed: {qemu_msg[-1]}")
    lines = (rundir / "console.log").read_text(errors="replace").strip().splitlines()
    if ready_s is not None:
        # L1's kernel died under the command (a panic: it reboots, and QEMU runs with
        # -no-reboot): like a freeze, that is the test host failing. Keep its console and
        # show where the trouble began, then report it as TIMEOUT_STATUS, as a freeze is.
        dest = _keep(rundir, "crashed")
        start = next((i for i, t in enumerate(lines) if PANIC_RE.search(t)), max(0, len(lines) - 15))
        shown = lines[max(0, start - 2):start + 40]
        sys.stderr.write("kvmhost: L1's kernel died; its console from the first sign of trouble:\n"
                         + "".join(f"  | {t}\n" for t in shown))
        say(f"kvmhost: L1 crashed before the command finished; its console is in {dest}")
        return RunResult(TIMEOUT_STATUS, output, ready_s, total, timed_out=True, stalled=dest)
    tail = lines[-15:]
    if tail:
        sys.stderr.write("kvmhost: last L1 console lines:\n" + "".join(f"  | {t}\n" for t in tail))
    raise KvmhostError("L1 stopped before the command finished (it never became ready)")


def _monitor(path: Path, commands: Sequence[str], timeout: float = 10.0) -> str:
    """Ask QEMU's human monitor; what it answered (or why it did not)."""
    import socket
    out = []
    try:
        with socket.socket(socket.AF_UNIX) as sk:
            sk.settimeout(timeout)
            sk.connect(str(path))
            for cmd in commands:
                sk.sendall(cmd.encode() + b"\n")
            sk.sendall(b"info version\n")  # its echo marks the end of the answers
            deadline = time.monotonic() + timeout
            data = b""
            while time.monotonic() < deadline and data.count(b"(qemu)") <= len(commands) + 1:
                chunk = sk.recv(65536)
                if not chunk:
                    break
                data += chunk
            # the monitor's readline echoes each keystroke: keep the final command text
            text = data.decode(errors="replace").replace("\r", "")
            out.append("\n".join(re.sub(r"\x1b\[K", "", re.sub(r".*\x1b\[D", "", ln)) for ln in text.split("\n")))
    except OSError as e:
        out.append(f"monitor did not answer: {e}")
    return "".join(out)


# the first console line of a dying L1 kernel
PANIC_RE = re.compile(r"BUG:|Oops|general protection|Kernel panic|WARNING:|watchdog:|Call Trace:|RIP: 0010")


def _keep(rundir: Path, suffix: str = "", dest: Path | None = None) -> str:
    """Copy the run's console and QEMU log into dest (default: a new directory under
    $KVMVM_HOME/kvmhost-stalls/); that directory."""
    if dest is None:
        dest = kvmvm_home() / "kvmhost-stalls" / (time.strftime("%Y%m%dT%H%M%S") + (f"-{suffix}" if suffix else ""))
        dest.mkdir(parents=True, exist_ok=True)
    for name in ("console.log", "qemu.log"):
        with contextlib.suppress(OSError):
            shutil.copy(rundir / name, dest / name)
    return str(dest)


def _save_stall(proc: subprocess.Popen, rundir: Path, quiet_s: float) -> str:
    """Keep what tells why L1 froze: QEMU's threads, L1's vCPU registers, the console tail."""
    dest = kvmvm_home() / "kvmhost-stalls" / time.strftime("%Y%m%dT%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    report = [f"no heartbeat for {quiet_s:.0f} s; qemu pid {proc.pid}"]
    for task in sorted(Path(f"/proc/{proc.pid}/task").glob("*")):
        try:
            stat = (task / "stat").read_text().split()
            wchan = (task / "wchan").read_text()
            comm = (task / "comm").read_text().strip()
            report.append(f"thread {task.name} {comm}: state {stat[2]} utime {stat[13]} stime {stat[14]} wchan {wchan}")
        except OSError:
            pass
    (dest / "threads.txt").write_text("\n".join(report) + "\n")
    (dest / "monitor.txt").write_text(_monitor(rundir / "monitor", ["info status", "info cpus", "info registers -a"]))
    gdb = shutil.which("gdb")
    if gdb:
        try:
            r = subprocess.run([gdb, "-batch", "-p", str(proc.pid), "-ex", "thread apply all bt"],
                               capture_output=True, text=True, timeout=60)
            (dest / "qemu-stacks.txt").write_text(r.stdout + r.stderr)
        except (OSError, subprocess.TimeoutExpired) as e:
            (dest / "qemu-stacks.txt").write_text(f"gdb failed: {e}\n")
    return _keep(rundir, dest=dest)  # the logs last: the freeze's last console lines included
