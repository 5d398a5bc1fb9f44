"""The tiny test guests: small freestanding ELF images (sources in guest-images/tiny) that
boot on any /dev/kvm, PVM included, and under QEMU microvm.

A wheel ships them built, in kvmvm/tiny/elf/ (setup.py runs `make -C guest-images/tiny`
while building it). A checkout finds them in guest-images/tiny/out after
`make -C guest-images/tiny` (scripts/setup.sh runs it).
"""

from __future__ import annotations

import os

from kvmvm.errors import ConfigError

_HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGED = os.path.join(_HERE, "elf")
CHECKOUT = os.path.join(os.path.dirname(os.path.dirname(_HERE)), "guest-images", "tiny", "out")
HOW = ("reinstall kvmvm from a wheel (it ships them), or run `make -C guest-images/tiny` in a "
       "kvmvm checkout")


def directory() -> str | None:
    """Where the built guests are: the wheel's copy first, then a checkout's build."""
    for d in (PACKAGED, CHECKOUT):
        if os.path.isdir(d) and any(n.endswith(".elf") for n in os.listdir(d)):
            return d
    return None


def guests() -> dict[str, str]:
    """name -> path of every built tiny guest (empty when none is built)."""
    d = directory()
    if d is None:
        return {}
    return {n[:-4]: os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".elf")}


def path(name: str) -> str:
    """The image of tiny guest `name` (e.g. "hello"); ConfigError naming the choices."""
    found = guests()
    if not found:
        raise ConfigError(f"no tiny guests are built: {HOW}")
    if name not in found:
        raise ConfigError(f"no tiny guest named {name!r}; there are: {', '.join(found)}")
    return found[name]
