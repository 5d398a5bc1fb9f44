"""Devices a Machine attaches beyond the legacy ones: the virtio-mmio devices.

`attach_all(vm, cfg)` creates the devices `cfg` asks for on `vm` and returns one
VirtioSlot per device, which the Machine puts on the kernel command line
(`virtio_mmio.device=`) and in the ACPI DSDT. Order: drives (the first is /dev/vda),
nets, vsock, rng; slot i is at VIRTIO_MMIO_BASE + i * 4 KiB with GSI 5 + i.
"""

from __future__ import annotations

from kvmvm.record import record

from kvmvm.boot import layout
from kvmvm.errors import ConfigError

FIRST_IRQ = 5      # 4 is the serial port
LAST_IRQ = 23      # the IOAPIC has 24 pins


@record(frozen=True)
class VirtioSlot:
    name: str       # "blk", "net", "vsock", "rng"
    base: int       # guest-physical base of its 4 KiB virtio-mmio window
    size: int
    irq: int        # IOAPIC pin (GSI)

    def cmdline(self) -> str:
        return f"virtio_mmio.device={self.size >> 10}K@{self.base:#x}:{self.irq}"


def plan(cfg) -> list[tuple[str, object]]:
    """Parse every device spec in cfg (all errors before anything is created). A device
    module is imported only when cfg has such a device (start-up time)."""
    out: list[tuple[str, object]] = []
    if cfg.drives:
        from kvmvm.devices.virtio import blk

        out += [("blk", blk.parse(s)) for s in cfg.drives]
    if cfg.nets:
        from kvmvm.devices.virtio import net

        out += [("net", net.parse(s, i)) for i, s in enumerate(cfg.nets)]
    if cfg.vsock:
        from kvmvm.devices.virtio import vsock

        out.append(("vsock", vsock.parse(cfg.vsock)))
    if cfg.rng:
        from kvmvm.devices.virtio import rng  # noqa: F401 (attach_all uses it)

        out.append(("rng", None))
    taps = [s.tap for k, s in out if k == "net" and s.backend == "tap"]
    if len(set(taps)) != len(taps):
        raise ConfigError("--net: the same TAP is given twice")
    if len(out) > LAST_IRQ - FIRST_IRQ + 1:
        raise ConfigError(f"too many virtio devices ({len(out)}; at most {LAST_IRQ - FIRST_IRQ + 1})")
    return out


def windows(cfg) -> list[tuple[int, int, int]]:
    """(base, size, irq) of each virtio slot attach_all(vm, cfg) will create."""
    return [(layout.VIRTIO_MMIO_BASE + i * layout.VIRTIO_MMIO_SIZE, layout.VIRTIO_MMIO_SIZE,
             FIRST_IRQ + i) for i in range(len(plan(cfg)))]


def attach_all(vm, cfg) -> list[VirtioSlot]:
    """Create the virtio devices that cfg asks for; one VirtioSlot each, in slot order."""
    planned = plan(cfg)
    if not planned:
        return []       # nothing of kvmvm.devices.virtio needed (start-up time)
    import sys

    from kvmvm.devices.virtio import flags_from_env

    flags = getattr(cfg, "virtio_flags", None)
    flags = flags_from_env() if flags is None else flags
    slots = []
    for i, (kind, spec) in enumerate(planned):
        base = layout.VIRTIO_MMIO_BASE + i * layout.VIRTIO_MMIO_SIZE
        irq = FIRST_IRQ + i
        if kind == "rng":
            from kvmvm.devices.virtio import rng

            rng.attach(vm, base, irq, flags)
        else:  # plan() imported the module
            sys.modules[f"kvmvm.devices.virtio.{kind}"].attach(vm, spec, base, irq, flags)
        slots.append(VirtioSlot(kind, base, layout.VIRTIO_MMIO_SIZE, irq))
    return slots
