"""A minimal writer of gzip-compressed newc cpio archives (the format of a Linux initramfs).

Written in Python so the initramfs is byte-for-byte reproducible and needs no cpio binary.
"""
from __future__ import annotations

import gzip
import stat
from pathlib import Path


class Cpio:
    """Collects entries in memory; :meth:`write` emits them as ``newc`` + gzip."""

    def __init__(self) -> None:
        self._entries: list[tuple[str, int, bytes, int, int]] = []

    def dir(self, name: str, mode: int = 0o755) -> None:
        self._entries.append((name, stat.S_IFDIR | mode, b"", 0, 0))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entries.append((name, stat.S_IFREG | mode, data, 0, 0))

    def copy(self, name: str, src: Path, mode: int = 0o755) -> None:
        self.file(name, Path(src).read_bytes(), mode)

    def symlink(self, name: str, target: str) -> None:
        self._entries.append((name, stat.S_IFLNK | 0o777, target.encode(), 0, 0))

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entries.append((name, stat.S_IFCHR | mode, b"", major, minor))

    def to_bytes(self) -> bytes:
        out = bytearray()
        for ino, (name, mode, data, rmaj, rmin) in enumerate(self._entries + [("TRAILER!!!", 0, b"", 0, 0)], 1):
            bname = name.lstrip("/").encode() + b"\0"
            nlink = 2 if stat.S_ISDIR(mode) else 1
            fields = (ino if mode else 0, mode, 0, 0, nlink if mode else 1, 0, len(data), 0, 0, rmaj, rmin, len(bname), 0)
            out += b"070701" + b"".join(b"%08x" % f for f in fields)
            out += bname + b"\0" * (-(110 + len(bname)) % 4)
            out += data + b"\0" * (-len(data) % 4)
        return bytes(out)

    def write(self, path: Path) -> None:
        # mtime=0: the same inputs give the same bytes.
        Path(path).write_bytes(gzip.compress(self.to_bytes(), compresslevel=6, mtime=0))
