"""Devices a Machine attaches beyond the legacy ones: the virtio-mmio devices.

`attach_all(vm, cfg)` creates the devices `cfg` asks for on `vm` and returns one
VirtioSlot per device, which the Machine puts on the kernel command line
(`virtio_mmio.device=`) and in the ACPI DSDT.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VirtioSlot:
    name: str       # "blk", "net", "vsock", "rng"
    base: int       # guest-physical base of its 4 KiB virtio-mmio window
    size: int
    irq: int        # IOAPIC pin (GSI)

    def cmdline(self) -> str:
        return f"virtio_mmio.device={self.size >> 10}K@{self.base:#x}:{self.irq}"


def attach_all(vm, cfg) -> list[VirtioSlot]:
    """Create the virtio devices that cfg asks for (none yet: see the virtio issue)."""
    return []
