"""Volumes for `kvmvm run -v`: named ext4 volumes that survive runs, and the rules of -v.

    $KVMVM_HOME/volumes/<name>.ext4     a sparse ext4 image, made on first use
    $KVMVM_HOME/volumes/.lock           creation and removal, one at a time

A VM that mounts a volume read-write holds `VolumeStore.lock(name)` (an exclusive flock on
the image file) for its whole life: ext4 mounted by two kernels at once would be corrupted,
so a second VM is refused, and so is `kvmvm volume rm` of a volume in use.

-v forms (podman's, where they can be honoured):
    NAME:/path[:ro|rw]          a named volume (created on first use)
    /host/dir:/path:ro          the directory packed read-only at start (hostdir.py)
    /host/dir:/path[:rw]        refused: the VM cannot share the host's filesystem yet
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import posixpath
import re
import time
from pathlib import Path
from typing import Iterator, Optional

from kvmvm.image.cache import kvmvm_home
from kvmvm.images.errors import VolumeError
from kvmvm.images.tools import run
from kvmvm.record import record

NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")
DEFAULT_SIZE_MIB = 1024
MAX_SIZE_MIB = 16 << 20         # 16 TiB: ext4's limit with 4 KiB blocks
SUFFIX = ".ext4"


@record(frozen=True)
class VolumeSpec:
    """One -v argument. kind: "volume" (source is a name) or "hostdir" (an absolute path)."""

    kind: str
    source: str
    target: str
    readonly: bool
    direct: bool = False    # the volume's image opened with O_DIRECT (no host page cache)


def parse_volume_spec(spec: str) -> VolumeSpec:
    """Parse `-v SRC:DEST[:OPTS]`; VolumeError (one line, a ConfigError) when it cannot be used."""
    if not isinstance(spec, str) or not spec:
        raise VolumeError("-v needs SOURCE:DEST[:ro]")
    parts = spec.split(":")
    if len(parts) == 1:
        raise VolumeError(f"-v {spec}: anonymous volumes are not supported; name one (-v NAME:{spec}) "
                          f"or give a host directory (-v /dir:{spec}:ro)")
    if len(parts) > 3:
        raise VolumeError(f"-v {spec}: too many ':' (expected SOURCE:DEST[:OPTIONS])")
    src, dest = parts[0], parts[1]
    opts = parts[2].split(",") if len(parts) == 3 else []
    ro, direct = None, False
    for o in opts:
        if o == "direct":
            direct = True
        elif o in ("ro", "rw"):
            if ro is not None and ro != (o == "ro"):
                raise VolumeError(f"-v {spec}: both ro and rw given")
            ro = o == "ro"
        elif o in ("z", "Z", ""):      # SELinux relabelling: nothing to do in a VM
            continue
        else:
            raise VolumeError(f"-v {spec}: unknown option {o!r} (known: ro, rw, direct)")
    target = _target(spec, dest)
    if not src:
        raise VolumeError(f"-v {spec}: empty source")
    if src.startswith(("/", ".", "~")):
        host = os.path.abspath(os.path.expanduser(src))
        if direct:
            raise VolumeError(f"-v {spec}: direct applies to named volumes (a host directory is "
                              f"copied into a fresh image for each run)")
        if not ro:
            raise VolumeError(f"-v {spec}: read-write host directories are not supported (the VM cannot "
                              f"share the host's filesystem yet); use {src}:{dest}:ro to copy it in "
                              f"read-only, or a named volume (-v NAME:{dest}) for data that persists")
        if not os.path.exists(host):
            raise VolumeError(f"-v {spec}: {src}: no such directory")
        if not os.path.isdir(host):
            raise VolumeError(f"-v {spec}: {src} is not a directory (only directories can be mounted)")
        return VolumeSpec("hostdir", host, target, True)
    if not NAME.match(src):
        raise VolumeError(f"-v {spec}: {src!r} is not a valid volume name "
                          f"([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 64) nor a path (start it with / or ./)")
    return VolumeSpec("volume", src, target, bool(ro), direct)


def _target(spec: str, dest: str) -> str:
    if not dest.startswith("/"):
        raise VolumeError(f"-v {spec}: the destination {dest!r} must be an absolute path")
    if any(p == ".." for p in dest.split("/")):
        raise VolumeError(f"-v {spec}: the destination may not contain '..'")
    norm = posixpath.normpath(dest)
    if norm == "/":
        raise VolumeError(f"-v {spec}: cannot mount over the container's root")
    if "\0" in dest or len(norm) > 4000:
        raise VolumeError(f"-v {spec}: bad destination path")
    return norm


def check_unique_targets(specs: list) -> None:
    """Two -v with the same destination are refused, as podman does."""
    seen = set()
    for s in specs:
        if s.target in seen:
            raise VolumeError(f"-v: {s.target} is the destination of two volumes")
        seen.add(s.target)


@record(frozen=True)
class Volume:
    name: str
    path: Path
    size: int           # apparent size of the image, bytes
    used: int           # bytes allocated on the host (the image is sparse)
    created: float
    in_use: bool

    def to_json(self) -> dict:
        return {"name": self.name, "path": str(self.path), "size": self.size, "used": self.used,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
                "in_use": self.in_use}


class VolumeStore:
    """Named ext4 volumes under `root` (default $KVMVM_HOME/volumes)."""

    def __init__(self, root=None):
        self.root = Path(root) if root is not None else kvmvm_home() / "volumes"

    def _check(self, name: str) -> None:
        if not isinstance(name, str) or not NAME.match(name):
            raise VolumeError(f"{name!r} is not a valid volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 64)")

    def path(self, name: str) -> Path:
        self._check(name)
        return self.root / (name + SUFFIX)

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def get_or_create(self, name: str, size_mib: int = DEFAULT_SIZE_MIB) -> Path:
        """The volume's image, made (sparse ext4, owned by root inside) if it does not exist."""
        p = self.path(name)
        if p.exists():
            return p
        if not isinstance(size_mib, int) or not 16 <= size_mib <= MAX_SIZE_MIB:
            raise VolumeError(f"volume size must be 16 MiB to {MAX_SIZE_MIB} MiB, not {size_mib!r}")
        with self._store_lock():
            if p.exists():
                return p
            tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
            try:
                with open(tmp, "wb") as f:
                    f.truncate(size_mib << 20)
                run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "root_owner=0:0,nodiscard",
                     "-L", name[:16], tmp], what=f"creating volume {name}", error=VolumeError)
                os.replace(tmp, p)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        return p

    @contextlib.contextmanager
    def _exclusive(self, name: str, busy: str) -> Iterator[Path]:
        """The volume's image with an exclusive flock held; VolumeError(busy) if a VM has it."""
        p = self.path(name)
        try:
            f = open(p, "rb")
        except FileNotFoundError:
            raise VolumeError(f"volume {name} does not exist") from None
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise VolumeError(f"volume {name} is {busy}") from None
            yield p

    def lock(self, name: str):
        """Hold the volume for one VM (read-write); VolumeError if another VM holds it."""
        return self._exclusive(name, "in use by another VM")

    def _in_use(self, name: str) -> bool:
        try:
            with self._exclusive(name, "in use"):
                return False
        except VolumeError:
            return self.path(name).exists()

    def list(self) -> list[Volume]:
        try:
            files = sorted(self.root.glob("*" + SUFFIX))
        except FileNotFoundError:
            return []
        out = []
        for p in files:
            name = p.name[: -len(SUFFIX)]
            if not NAME.match(name):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append(Volume(name, p, st.st_size, st.st_blocks * 512, st.st_mtime, self._in_use(name)))
        return out

    def get(self, name: str) -> Optional[Volume]:
        for v in self.list():
            if v.name == name:
                return v
        return None

    def remove(self, name: str) -> None:
        with self._store_lock(), self._exclusive(name, "in use by a running VM") as p:
            p.unlink()


def volumes_json(vols: list) -> str:
    return json.dumps([v.to_json() for v in vols], indent=2)
