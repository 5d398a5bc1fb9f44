"""Per-run directories: the sockets, console log and helper pids of one container VM.

Each run holds an exclusive flock on `<dir>/lock` (its pid written inside) for its whole
life; the kernel drops the lock when the process dies, even by SIGKILL. Every start first
reclaims the directories whose lock nobody holds: helpers recorded in `pids` (checked by
their start time, so a reused pid is never killed) are ended and the directory removed. A
lock file with no pid in it yet belongs to a run being created right now (between creating
its lock file and locking it): such a directory is left alone for a minute.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import signal
import time
from pathlib import Path

from kvmvm.procfs import start_time

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


def runtime_root() -> Path:
    """$XDG_RUNTIME_DIR/kvmvm/run when that is usable, else $KVMVM_HOME/run."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return Path(xdg) / "kvmvm" / "run"
    from kvmvm.image.cache import kvmvm_home

    return kvmvm_home() / "run"




def _kill_recorded(d: Path) -> None:
    with contextlib.suppress(OSError):
        for line in (d / "pids").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                pid = int(parts[0])
                if pid > 1 and str(start_time(pid)) == parts[1]:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)


def reclaim(root: Path | None = None) -> list[str]:
    """Remove what dead runs left behind; returns the directories removed."""
    root = root or runtime_root()
    gone = []
    if not root.is_dir():
        return gone
    for d in root.iterdir():
        if not d.is_dir():
            continue
        try:
            fd = os.open(d / "lock", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None      # being created right now, or never finished: judge by age
        except OSError:
            continue
        if fd is None:
            with contextlib.suppress(OSError):
                if time.time() - d.stat().st_mtime > 60:
                    shutil.rmtree(d, ignore_errors=True)
                    gone.append(str(d))
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # no pid yet: a RunDir between creating its lock file and locking it (another
            # thread's, or another process's, right now), or one that died there: by age
            if not os.pread(fd, 16, 0) and time.time() - d.stat().st_mtime <= 60:
                raise BlockingIOError
        except OSError:
            os.close(fd)
            continue        # alive
        try:
            _kill_recorded(d)
            shutil.rmtree(d, ignore_errors=True)
            gone.append(str(d))
        finally:
            os.close(fd)
    return gone


class RunDir:
    """A live run's directory; `close()` ends its helpers and removes it."""

    def __init__(self, name: str | None = None, root: Path | None = None):
        from kvmvm.errors import ConfigError

        self.root = root or runtime_root()
        self.root.mkdir(parents=True, exist_ok=True)
        reclaim(self.root)
        if name is not None and not NAME_RE.match(name):
            raise ConfigError(f"--name {name!r}: use letters, digits, '_', '.', '-' (at most 63)")
        self.id = secrets.token_hex(6)
        self.name = name or self.id
        self.path = self.root / self.id
        self.path.mkdir(mode=0o700)
        self.lock_fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        os.write(self.lock_fd, f"{os.getpid()}\n".encode())
        if name is not None:
            with open(self.root / ".names.lock", "w") as nl:
                fcntl.flock(nl, fcntl.LOCK_EX)
                if any(self._live_name(d) == name for d in self.root.iterdir() if d != self.path):
                    self.close()
                    raise ConfigError(f"the container name {name!r} is already in use")
                (self.path / "name").write_text(name)

    @staticmethod
    def _live_name(d: Path) -> str | None:
        try:
            return (d / "name").read_text()
        except OSError:
            return None

    def file(self, name: str) -> Path:
        return self.path / name

    def add_pid(self, pid: int) -> None:
        """Record a helper process (e.g. passt) for reclaim after a SIGKILL of kvmvm."""
        st = start_time(pid)
        if st is not None:
            with open(self.path / "pids", "a") as f:
                f.write(f"{pid} {st}\n")

    def close(self) -> None:
        if self.lock_fd is None:
            return
        _kill_recorded(self.path)
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self.lock_fd)
        self.lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
