"""The default guest: kvmvm's kernel + initramfs as one set of cached artifacts.

Whenever the set is complete for the current inputs, it is also recorded in the small
index that `kvmvm boot` reads (kvmvm.image.index), so booting needs none of this code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import deps, index, initramfs, kernel
from .cache import kvmvm_home
from .progress import PlainProgress, Progress


@dataclass
class Artifacts:
    """Paths of the default guest: any of them None when not built (cached_default only)."""

    vmlinux: Optional[Path]
    bzimage: Optional[Path]
    initramfs: Optional[Path]
    key: Optional[str] = None            # kernel cache key
    kernel_version: Optional[str] = None
    initramfs_key: Optional[str] = None
    home: Optional[Path] = None

    @property
    def complete(self) -> bool:
        return None not in (self.vmlinux, self.bzimage, self.initramfs)

    def to_json(self) -> dict:
        s = lambda p: str(p) if p is not None else None  # noqa: E731
        return {"vmlinux": s(self.vmlinux), "bzimage": s(self.bzimage),
                "initramfs": s(self.initramfs), "key": self.key,
                "kernel_version": self.kernel_version, "initramfs_key": self.initramfs_key,
                "home": s(self.home)}


def _artifacts(k: Optional[kernel.Kernel], i: Optional[initramfs.Initramfs], home: Path) -> Artifacts:
    art = Artifacts(k.vmlinux if k else None, k.bzimage if k else None, i.path if i else None,
                    k.key if k else None, k.kernel_version if k else None,
                    i.key if i else None, home)
    if art.complete:
        index.record(str(home), art.to_json(), _input_files())
    return art


def _input_files() -> list[str]:
    """The files whose change can change the default guest's cache keys (index.py)."""
    return [kernel.fragment_path(), initramfs.init_path(), str(kernel.TARBALL), str(initramfs.BUSYBOX)]


def cached_default(home: Optional[Path] = None) -> Artifacts:
    """What is in the cache for the current inputs, building nothing."""
    home = home or kvmvm_home()
    return _artifacts(kernel.cached(home), initramfs.cached(home), home)


def missing_packages(home: Optional[Path] = None, force: bool = False) -> list[str]:
    """Debian packages that building what is not cached yet (everything with force) needs."""
    home = home or kvmvm_home()
    need = []
    if force or kernel.cached(home) is None:
        need += kernel.missing_packages()
    if force or initramfs.cached(home) is None:
        need += initramfs.missing_packages()
    return need


def build_default(home: Optional[Path] = None, jobs: Optional[int] = None, force: bool = False,
                  progress: Optional[Progress] = None, install_deps: bool = False) -> Artifacts:
    """Build the kernel and initramfs (each only if missing, or always with force). Missing
    Debian packages are named in one error, or installed first with install_deps (root)."""
    home = home or kvmvm_home()
    progress = progress or Progress()
    deps.require(missing_packages(home, force), install_deps, progress)
    k = kernel.build(home, jobs=jobs, force=force, progress=progress)
    i = initramfs.build(home, force=force, progress=progress)
    return _artifacts(k, i, home)


def ensure_default(progress: Optional[Progress] = None, home: Optional[Path] = None,
                   jobs: Optional[int] = None) -> Artifacts:
    """The default guest's kernel + initramfs, building whatever is missing. Instant
    when cached. `progress` defaults to plain lines on stderr when a build is needed."""
    home = home or kvmvm_home()
    art = cached_default(home)
    if art.complete:
        return art
    return build_default(home, jobs=jobs, progress=progress or PlainProgress())
