"""virtio-rng: bytes from the host's getrandom (on by default, `--no-rng` turns it off)."""

from __future__ import annotations

from kvmvm.bindings import check, lib


def attach(vm, base: int, irq: int, flags: int = 0) -> None:
    check(lib.kvmvm_vm_add_virtio_rng(vm._vm, base, irq, flags), "virtio-rng")
