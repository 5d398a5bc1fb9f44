"""kvmvm's own guest kernel and default initramfs, built on demand and cached.

    from kvmvm.image import ensure_default
    art = ensure_default()          # builds what is missing (kernel: ~6-8 min on 2 cores)
    art.vmlinux, art.bzimage, art.initramfs

Everything lives under $KVMVM_HOME (default ~/.cache/kvmvm); see cache.py for the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import initramfs, kernel
from .cache import kvmvm_home
from .progress import PlainProgress, Progress

__all__ = ["Artifacts", "ensure_default", "cached_default", "build_default", "kvmvm_home",
           "Progress", "PlainProgress"]


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
    return Artifacts(k.vmlinux if k else None, k.bzimage if k else None, i.path if i else None,
                     k.key if k else None, k.kernel_version if k else None,
                     i.key if i else None, home)


def cached_default(home: Optional[Path] = None) -> Artifacts:
    """What is in the cache for the current inputs, building nothing."""
    home = home or kvmvm_home()
    return _artifacts(kernel.cached(home), initramfs.cached(home), home)


def build_default(home: Optional[Path] = None, jobs: Optional[int] = None, force: bool = False,
                  progress: Optional[Progress] = None) -> Artifacts:
    """Build the kernel and initramfs (each only if missing, or always with force)."""
    home = home or kvmvm_home()
    progress = progress or Progress()
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
