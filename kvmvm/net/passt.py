"""One passt process per VM: user-mode networking for `--net user` (no root, no TAP).

passt (Debian package passt) translates the guest's Ethernet frames to ordinary sockets on
the host. It answers ARP and DHCP (and NDP/DHCPv6) itself, maps the gateway address to the
host's loopback, and forwards the host ports given with `-t`/`-u` to the guest.

kvmvm and passt share one connected socketpair: passt gets its end with `--fd` and the
virtio-net stream backend (kvmvm/native/net_stream.c) gets the other. The wire format is
QEMU's stream protocol: a 4-byte big-endian length before each frame. With `--fd` passt
exits as soon as the socket closes, so it ends with the VM (kill -9 of kvmvm included), and
`stop()` reaps it, killing one that has not ended. A passt that a guest sent into a loop
(Debian 12's passt spins forever on some batches of segments: kvmvm/native/virtio_net.c)
never sees its socket close: if kvmvm was killed, the next passt kvmvm starts kills it
(`reclaim()`); while kvmvm runs, a watchdog thread kills a passt that has run flat out for
`SPIN_WINDOW_S` without once waiting for anything, always running or runnable (a loop;
passt at work sleeps in `epoll_wait` many times a second), and the guest's network ends
with one line on stderr. passt starts in its own session, so a ^C meant for kvmvm
does not reach it, and `start()` returns once passt has written its pid file, i.e. after it
parsed its options and bound the forwarded ports. That pid file is then removed.

KVMVM_PASST_PCAP=DIR (for debugging): each passt records the frames it exchanges with the
guest in DIR/passt-<kvmvm pid>-<n>.pcap (passt's --pcap).
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

from kvmvm.errors import ConfigError, KvmvmError
from kvmvm.record import Factory, record

READY_TIMEOUT_S = 20.0      # passt is up in milliseconds; an emulated test host takes seconds
STOP_TIMEOUT_S = 1.0
SPIN_WINDOW_S = 10.0        # passt busy this long with no voluntary context switch: a loop
SPIN_BUSY_SHARE = 0.9       # ... running or waiting for a CPU for at least this share of it
DEFAULT_MTU = 1500          # the guest's virtio-net has no mergeable buffers: frames fit 1514
_PORT = re.compile(r"^(?:[0-9a-fA-F.:]+/)?\d{1,5}(?:-\d{1,5})?(?::\d{1,5}(?:-\d{1,5})?)?$")


class NetError(KvmvmError):
    """passt is missing, refused its options, or died."""

    exit_code = 1


@record
class PasstOptions:
    """What passt is told. Empty fields keep passt's defaults (the host's own address,
    gateway and DNS, as passt copies them from the interface with the default route)."""

    tcp: list = Factory(list)       # forwarded host ports: "8080:80", "2222", "127.0.0.1/8080:80"
    udp: list = Factory(list)
    mtu: int = DEFAULT_MTU
    address: Optional[str] = None   # the guest's IPv4 address (-a)
    netmask: Optional[str] = None   # (-n)
    gateway: Optional[str] = None   # (-g)
    dns: list = Factory(list)       # (-D)

    def argv(self) -> list:
        out = ["--mtu", str(self.mtu)]
        for p in self.tcp:
            out += ["-t", p]
        for p in self.udp:
            out += ["-u", p]
        if self.address:
            out += ["-a", self.address]
        if self.netmask:
            out += ["-n", self.netmask]
        if self.gateway:
            out += ["-g", self.gateway]
        for d in self.dns:
            out += ["-D", d]
        return out


def check_port_spec(spec: str, what: str = "port") -> str:
    if not isinstance(spec, str) or not _PORT.match(spec):
        raise ConfigError(f"{what} {spec!r}: expected HOST_PORT[:GUEST_PORT] (ranges a-b, optional ADDR/ prefix)")
    for n in re.findall(r"(?<![./0-9a-fA-F])(\d{1,5})(?![0-9.])", spec.split("/")[-1]):
        if not 1 <= int(n) <= 65535:
            raise ConfigError(f"{what} {spec!r}: port {n} is out of range (1-65535)")
    return spec


def passt_binary() -> str:
    path = shutil.which("passt") or shutil.which("passt", path="/usr/bin:/usr/sbin")
    if path is None:
        raise NetError("passt is not installed (Debian package passt: apt-get install passt); "
                       "--net user needs it")
    return path


def _runas() -> Optional[tuple[int, int]]:
    """The user passt runs as: itself when not root; as root, "nobody" (passt refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return 65534, 65534


_pcap_seq = itertools.count()


def _pcap_file(runas: Optional[tuple[int, int]]) -> Optional[str]:
    """KVMVM_PASST_PCAP=DIR: a capture file there that passt (perhaps as nobody) can write."""
    d = os.environ.get("KVMVM_PASST_PCAP")
    if not d:
        return None
    path = Path(d) / f"passt-{os.getpid()}-{next(_pcap_seq)}.pcap"
    try:
        path.touch(0o644)
        if runas is not None:
            os.chown(path, *runas)
    except OSError as e:
        raise NetError(f"KVMVM_PASST_PCAP: cannot create {path}: {e.strerror}") from None
    return str(path)


def _why(err_file) -> str:
    err_file.seek(0)
    text = err_file.read().decode(errors="replace")
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.startswith("Failed to send") and "Changing to nobody" not in ln]
    return lines[-1] if lines else ""


_RUNDIR_PREFIX = "kvmvm-passt-"        # + kvmvm's pid + "-": the pid file's directory names its owner
_OWNER_RE = re.compile(rf"/{_RUNDIR_PREFIX}(\d+)-")


def reclaim() -> int:
    """Kill the passt processes whose kvmvm is gone: each names its kvmvm's pid in its
    `--pid` path (`start()`), and one whose parent is no longer that pid was left behind.
    How many were killed."""
    from kvmvm import procfs
    killed = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/comm", os.O_RDONLY)
            try:
                if not os.read(fd, 5) == b"passt":
                    continue
            finally:
                os.close(fd)
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        owner = next((int(m.group(1)) for i, a in enumerate(argv[:-1]) if a == b"--pid"
                      for m in [_OWNER_RE.search(argv[i + 1].decode(errors="replace"))] if m), None)
        st = procfs.stat_fields(name)
        if owner is None or st is None or int(st[1]) == owner:
            continue
        try:
            os.kill(int(name), signal.SIGKILL)
            killed += 1
        except OSError:
            pass
    return killed


def _spin_sample(pid: int, tick: int) -> Optional[tuple[float, int]]:
    """(seconds it was running or runnable, voluntary context switches) of a single-threaded
    process; None once it has ended. Running or waiting for a CPU (/proc/PID/schedstat) is
    all a loop does however loaded the host is; without schedstat, CPU time stands in."""
    from kvmvm import procfs

    fields = procfs.stat_fields(pid)
    if not fields or fields[0] in ("Z", "X"):
        return None
    try:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                run_ns, wait_ns = (int(x) for x in f.read().split()[:2])
            busy = (run_ns + wait_ns) / 1e9
        except (OSError, ValueError):
            busy = (int(fields[11]) + int(fields[12])) / tick        # utime + stime
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return busy, int(line.split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return None


class Passt:
    """A passt process for one VM. `start()` returns kvmvm's end of the socketpair."""

    def __init__(self, options: Optional[PasstOptions] = None):
        self.options = options or PasstOptions()
        self.proc: Optional[subprocess.Popen] = None
        self.sock: Optional[socket.socket] = None
        self._err = None                # passt's stderr, kept to say why it ended early
        self.ended_early: Optional[str] = None
        self._watch_stop = threading.Event()
        self._watcher: Optional[threading.Thread] = None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def start(self) -> socket.socket:
        exe = passt_binary()
        reclaim()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        rundir = Path(tempfile.mkdtemp(prefix=f"{_RUNDIR_PREFIX}{os.getpid()}-"))
        err = self._err = tempfile.TemporaryFile()
        try:
            os.chmod(rundir, 0o755)
            pidfile = rundir / "passt.pid"
            pidfile.touch(0o644)
            argv = [exe, "--foreground", "--quiet", "--fd", str(theirs.fileno()), "--pid", str(pidfile)]
            runas = _runas()
            if runas is not None:
                os.chown(pidfile, *runas)
                argv += ["--runas", f"{runas[0]}:{runas[1]}"]
            pcap = _pcap_file(runas)
            if pcap:
                argv += ["--pcap", pcap]
            argv += self.options.argv()
            self.proc = subprocess.Popen(argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            theirs.close()
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                if pidfile.stat().st_size > 0:
                    break
                if self.proc.poll() is not None:
                    raise NetError(f"passt failed: {_why(err) or f'exit status {self.proc.returncode}'}")
                if time.monotonic() > deadline:
                    raise NetError(f"passt did not start within {READY_TIMEOUT_S:.0f} s ({_why(err) or 'no message'})")
                time.sleep(0.002)
            self.sock = ours
            self._watcher = threading.Thread(target=self._watch, args=(self.proc,),
                                             name="passt-watchdog", daemon=True)
            self._watcher.start()
            return ours
        except BaseException:
            theirs.close()
            ours.close()
            self.stop()
            raise
        finally:
            shutil.rmtree(rundir, ignore_errors=True)

    def _watch(self, p: subprocess.Popen) -> None:
        """Kill passt once it has spun (see the module's docstring). Samples once a second
        how long passt was running or runnable, and its voluntary context switches, which
        count every time it waited (epoll_wait, a blocking read, a lock)."""
        tick = os.sysconf("SC_CLK_TCK")
        history: list = []
        period = min(1.0, SPIN_WINDOW_S / 5)
        while not self._watch_stop.wait(period):
            sample = _spin_sample(p.pid, tick)
            if sample is None:
                return                      # passt ended
            history.append((time.monotonic(), *sample))
            while len(history) > 1 and history[-1][0] - history[1][0] >= SPIN_WINDOW_S:
                history.pop(0)
            t0, busy0, waits0 = history[0]
            t1, busy1, waits1 = history[-1]
            if t1 - t0 >= SPIN_WINDOW_S and waits1 == waits0 and busy1 - busy0 >= SPIN_BUSY_SHARE * (t1 - t0):
                self.ended_early = (f"it ran flat out for {t1 - t0:.0f} s without waiting once, a loop "
                                    "the guest's traffic can send Debian 12's passt into; killed")
                sys.stderr.write(f"kvmvm: passt spun ({self.ended_early}); the guest's network is down\n")
                sys.stderr.flush()
                if p.poll() is None:
                    p.kill()
                return

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """End passt (it normally has already, when the VM closed its socket) and reap it.
        A passt that failed on its own (a signal or an error status; the end of its socket
        makes it exit 0) took the guest's network with it: one line on stderr says how."""
        p, self.proc = self.proc, None
        self._watch_stop.set()
        w, self._watcher = self._watcher, None
        if w is not None and w is not threading.current_thread():
            w.join(2.0)
        if (p is not None and self.sock is not None and p.poll() is not None and p.returncode != 0
                and self.ended_early is None):
            st = p.returncode
            if st < 0:
                try:
                    how = f"killed by {signal.Signals(-st).name}"
                except ValueError:
                    how = f"killed by signal {-st}"
            else:
                why = _why(self._err) if self._err is not None else ""
                how = f"exit status {st}{': ' + why if why else ''}"
            self.ended_early = how
            sys.stderr.write(f"kvmvm: passt ended while the VM ran ({self.ended_early}); the guest's network went with it\n")
        if self._err is not None:
            self._err.close()
            self._err = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if p is None:
            return
        try:
            p.wait(0.3)          # the VM closed its end: passt is on its way out
            return
        except subprocess.TimeoutExpired:
            pass
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    close = stop

    def __enter__(self) -> "Passt":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
