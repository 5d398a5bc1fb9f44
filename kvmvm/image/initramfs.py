"""kvmvm's default initramfs: Debian's static busybox plus /init, as a gzip'd newc cpio.

The archive is deterministic (fixed owners, modes, mtimes, inode numbers and gzip header),
so the same inputs give the same bytes and the cache key can be trusted.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from kvmvm.errors import ConfigError, KvmvmError

from . import cache
from .progress import Progress

BUILDER_VERSION = "initramfs-1"
BUSYBOX = Path("/bin/busybox")
NAME = "initramfs.cpio.gz"

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000

# (path, kind, mode, payload): kind d=directory f=file l=symlink c=char device (payload=(maj, min))
DIRS = ["bin", "dev", "etc", "mnt", "proc", "root", "run", "sbin", "sys", "tmp",
        "usr", "usr/bin", "usr/sbin", "var"]


def init_text() -> bytes:
    """The /init script shipped in this package (guest-images/initramfs/init links to it)."""
    return resources.files(__package__).joinpath("init.sh").read_bytes()


def init_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "init.sh")


def missing_packages() -> List[str]:
    """Debian packages the initramfs build needs that are not installed."""
    try:
        read_busybox()
    except KvmvmError:
        return ["busybox-static"]
    return []


@dataclass
class Entry:
    path: str
    kind: str  # "d", "f", "l", "c"
    mode: int
    data: bytes = b""
    rdev: Tuple[int, int] = (0, 0)


def newc(entries: Iterable[Entry]) -> bytes:
    """Pack entries as a "newc" (SVR4, no CRC) cpio archive, the format the kernel reads."""
    out = io.BytesIO()

    def pad4():
        out.write(b"\0" * (-out.tell() % 4))

    def header(ino, mode, nlink, size, rdev, name: bytes):
        fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.write(name + b"\0")
        pad4()

    ino = 1
    for e in entries:
        kind_bits = {"d": S_IFDIR, "f": S_IFREG, "l": S_IFLNK, "c": S_IFCHR}[e.kind]
        data = e.data if e.kind in ("f", "l") else b""
        header(ino, kind_bits | e.mode, 2 if e.kind == "d" else 1, len(data), e.rdev,
               e.path.lstrip("/").encode())
        out.write(data)
        pad4()
        ino += 1
    header(0, 0, 1, 0, (0, 0), b"TRAILER!!!")
    return out.getvalue()


def read_newc(blob: bytes) -> List[Entry]:
    """Unpack a newc archive (gzip'd or not) into entries: for tests and `image list`."""
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    out, off = [], 0
    while True:
        if blob[off:off + 6] != b"070701":
            raise ValueError(f"bad cpio magic at offset {off}")
        f = [int(blob[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        name = blob[off + 110: off + 110 + namesize - 1].decode()
        off = (off + 110 + namesize + 3) & ~3
        data = blob[off: off + size]
        off = (off + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        kind = {S_IFDIR: "d", S_IFREG: "f", S_IFLNK: "l", S_IFCHR: "c"}.get(mode & 0o170000, "?")
        out.append(Entry(name, kind, mode & 0o7777, data, (rmaj, rmin)))


def entries(init: bytes, busybox: bytes) -> List[Entry]:
    """The archive's contents. /dev/console must exist before devtmpfs is mounted: the
    kernel opens it for init's stdin/stdout/stderr."""
    ents = [Entry(d, "d", 0o755) for d in DIRS]
    ents[DIRS.index("tmp")].mode = 0o1777
    ents += [
        Entry("dev/console", "c", 0o600, rdev=(5, 1)),
        Entry("dev/null", "c", 0o666, rdev=(1, 3)),
        Entry("bin/busybox", "f", 0o755, busybox),
        Entry("bin/sh", "l", 0o777, b"busybox"),
        Entry("init", "f", 0o755, init),
    ]
    return ents


def pack(init: bytes, busybox: bytes) -> bytes:
    """The gzip'd archive; mtime 0 and no file name in the gzip header (deterministic)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(newc(entries(init, busybox)))
    return buf.getvalue()


def _is_static_elf(blob: bytes) -> bool:
    """True for a 64-bit ELF without a PT_INTERP program header (statically linked)."""
    if blob[:4] != b"\x7fELF" or blob[4] != 2:
        return False
    phoff = int.from_bytes(blob[32:40], "little")
    phentsize = int.from_bytes(blob[54:56], "little")
    phnum = int.from_bytes(blob[56:58], "little")
    for i in range(phnum):
        p_type = int.from_bytes(blob[phoff + i * phentsize: phoff + i * phentsize + 4], "little")
        if p_type == 3:  # PT_INTERP
            return False
    return True


def busybox_version() -> str:
    """The Debian package version of busybox-static, or 'unknown' without dpkg."""
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "busybox-static"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def read_busybox(path: Optional[Path] = None) -> bytes:
    path = path or BUSYBOX
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise KvmvmError(f"{path} not found: install it with `apt-get install busybox-static`") from None
    if not _is_static_elf(blob):
        raise ConfigError(f"{path} is not a static 64-bit busybox: install `busybox-static`")
    return blob


@dataclass
class Initramfs:
    path: Path
    key: str
    busybox_version: str


def initramfs_key(init: bytes, busybox: bytes) -> str:
    """Depends on the init text, the busybox binary itself and the packing code's version."""
    return cache.cache_key(BUILDER_VERSION, init, busybox)


def cached(home: Optional[Path] = None, busybox: Optional[Path] = None) -> Optional[Initramfs]:
    """The cached default initramfs for the current inputs, or None."""
    try:
        bb = read_busybox(busybox)
    except KvmvmError:
        return None
    entry = cache.entry_dir("initramfs", initramfs_key(init_text(), bb), home)
    meta = cache.read_meta(entry)
    if meta is None or not (entry / NAME).is_file():
        return None
    return Initramfs(entry / NAME, entry.name, meta.get("busybox_version", "unknown"))


def build(home: Optional[Path] = None, force: bool = False, progress: Optional[Progress] = None,
          busybox: Optional[Path] = None) -> Initramfs:
    """Build (or find in the cache) the default initramfs; returns its path and key."""
    progress = progress or Progress()
    home = home or cache.kvmvm_home()
    init, bb = init_text(), read_busybox(busybox)
    key = initramfs_key(init, bb)
    entry = cache.entry_dir("initramfs", key, home)
    with cache.locked(home, "initramfs"):
        hit = cached(home, busybox)
        if hit and not force:
            progress.note(f"initramfs: cached {hit.path}")
            return hit
        version = busybox_version()
        progress.phase(f"initramfs: packing busybox {version} + /init")
        meta = {"kind": "initramfs", "key": key, "builder": BUILDER_VERSION,
                "busybox_version": version, "busybox": str(busybox or BUSYBOX)}
        with cache.staging(entry, meta) as tmp:
            (tmp / NAME).write_bytes(pack(init, bb))
            (tmp / "init").write_bytes(init)
        progress.note(f"initramfs: {entry / NAME}")
        return Initramfs(entry / NAME, key, version)


def main(argv=None) -> int:
    """`python -m kvmvm.image.initramfs [OUT]`: write the default initramfs to OUT
    (default: print the cached path, building it if needed)."""
    argv = sys.argv[1:] if argv is None else argv
    out = build(progress=None)
    if argv:
        shutil.copyfile(out.path, argv[0])
        print(argv[0])
    else:
        print(out.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
