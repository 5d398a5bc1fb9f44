"""virtio-mmio devices: the C device models (kvmvm/native/virtio_*.c) described from Python.

Each module parses its command-line spec into a record (kvmvm.record) (bad input: ConfigError, one
line) and attaches the device to a Vm at a given slot (base address, GSI).
"""

from __future__ import annotations

import os

from kvmvm.bindings import check, ffi, lib

# data-path switches: exit-path notifications and KVM_IRQ_LINE interrupts instead of eventfds
NO_IOEVENTFD = lib.KVMVM_VIRTIO_NO_IOEVENTFD
NO_IRQFD = lib.KVMVM_VIRTIO_NO_IRQFD

STATUS_NEEDS_RESET = 64


def flags_from_env() -> int:
    """KVMVM_VIRTIO_EXITPATH=1 turns both eventfd paths off (tests of the fallback)."""
    return NO_IOEVENTFD | NO_IRQFD if os.environ.get("KVMVM_VIRTIO_EXITPATH") == "1" else 0


def parse_options(spec: str, flag: str, first_positional: str | None = None) -> dict[str, str]:
    """'a=1,b,c=x' -> {'a': '1', 'b': '', 'c': 'x'}; with first_positional, a leading
    item without '=' is stored under that key."""
    from kvmvm.errors import ConfigError

    out: dict[str, str] = {}
    for i, item in enumerate(spec.split(",")):
        if i == 0 and first_positional and "=" not in item:
            key, val = first_positional, item
        else:
            key, _, val = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"{flag} {spec!r}: empty option")
        if key in out:
            raise ConfigError(f"{flag} {spec!r}: {key} given twice")
        out[key] = val
    return out


def info(vm, base: int) -> dict:
    """The transport's state and counters for the device at base."""
    i = ffi.new("struct kvmvm_virtio_info *")
    check(lib.kvmvm_vm_virtio_info(vm._vm, base, i), f"virtio device at {base:#x}")
    return {
        "device_id": i.device_id, "status": i.status, "isr": i.isr,
        "ioeventfd": bool(i.ioeventfd), "irqfd": bool(i.irqfd), "broken": bool(i.broken),
        "broken_why": ffi.string(i.broken_why).decode(errors="replace"),
        "driver_features": i.driver_features, "kicks": i.kicks, "requests": i.requests,
        "interrupts": i.interrupts, "bytes_in": i.bytes_in, "bytes_out": i.bytes_out,
    }
