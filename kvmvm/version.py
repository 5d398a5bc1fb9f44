"""kvmvm's version and the build of its C core, for `kvmvm --version` and `kvmvm doctor`."""

from __future__ import annotations

from kvmvm import __version__


def core_build(lib=None) -> str:
    """"build <12 hex digits of the C sources + compiler + flags>, <compiler>"."""
    if lib is None:
        from kvmvm._native import lib
    from kvmvm._native import ffi

    ident = ffi.string(lib.kvmvm_build_id()).decode()
    cc = ffi.string(lib.kvmvm_build_cc()).decode()
    return f"build {ident}, {cc}"


def version_line() -> str:
    try:
        core = core_build()
    except (ImportError, AttributeError) as e:
        core = f"not loadable: {e}"
    return f"kvmvm {__version__} (C core {core})"
