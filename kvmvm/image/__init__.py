"""kvmvm's own guest kernel and default initramfs, built on demand and cached.

    from kvmvm.image import ensure_default
    art = ensure_default()          # builds what is missing (kernel: ~6-8 min on 2 cores)
    art.vmlinux, art.bzimage, art.initramfs

Everything lives under $KVMVM_HOME (default ~/.cache/kvmvm); see cache.py for the layout.
The names below load their module on first use: `kvmvm boot` with the default kernel only
needs kvmvm.image.index (a small index of the cached artifacts), not the build code.
"""

from __future__ import annotations

_EXPORTS = {"Artifacts": "default", "ensure_default": "default", "cached_default": "default",
            "build_default": "default", "kvmvm_home": "cache", "Progress": "progress",
            "PlainProgress": "progress"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
