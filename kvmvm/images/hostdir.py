"""`-v /host/dir:/path:ro`: the directory packed into a read-only EROFS image at start.

The image is a snapshot of the directory as it was when the VM started (a later change on
the host is not seen inside). The caller owns the file: `kvmvm run` puts it in the VM's run
directory, which it removes on every ending; without `dest_dir` it goes to
$KVMVM_HOME/tmp/hostdir-<pid>-*.erofs, and `reclaim()` removes those of dead processes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from kvmvm.image.cache import kvmvm_home
from kvmvm.images.errors import VolumeError
from kvmvm.images.tools import run

FSTYPE = "erofs"


def pack_readonly(host_dir, dest_dir: Optional[Path] = None) -> tuple[Path, str]:
    """Pack `host_dir` into a new read-only filesystem image; returns (path, fstype)."""
    src = Path(host_dir)
    if not src.is_dir():
        raise VolumeError(f"{host_dir}: not a directory")
    if not os.access(src, os.R_OK | os.X_OK):
        raise VolumeError(f"{host_dir}: not readable")
    dest_dir = Path(dest_dir) if dest_dir is not None else kvmvm_home() / "tmp"
    dest_dir.mkdir(parents=True, exist_ok=True)
    if dest_dir == kvmvm_home() / "tmp":
        reclaim(dest_dir)
    fd, name = tempfile.mkstemp(prefix=f"hostdir-{os.getpid()}-", suffix=f".{FSTYPE}", dir=dest_dir)
    os.close(fd)
    out = Path(name)
    try:
        run(["mkfs.erofs", "--quiet", out, src], what=f"packing {host_dir} read-only", error=VolumeError)
        os.chmod(out, 0o444)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        raise
    return out, FSTYPE


@contextlib.contextmanager
def packed(host_dir, dest_dir: Optional[Path] = None) -> Iterator[tuple[Path, str]]:
    """pack_readonly as a context manager that removes the image afterwards."""
    path, fstype = pack_readonly(host_dir, dest_dir)
    try:
        yield path, fstype
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def reclaim(dest_dir: Optional[Path] = None) -> int:
    """Remove hostdir images left by processes that no longer exist; returns how many."""
    d = Path(dest_dir) if dest_dir is not None else kvmvm_home() / "tmp"
    n = 0
    for p in d.glob(f"hostdir-*.{FSTYPE}"):
        try:
            pid = int(p.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
