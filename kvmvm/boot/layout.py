"""Where kvmvm puts things in guest-physical memory (x86-64), in one place.

Low memory holds the boot data; kernels load at 1 MiB or above; RAM above 3 GiB moves
to 4 GiB so the 3-4 GiB hole can hold MMIO devices, the LAPIC and the IOAPIC.
"""

from __future__ import annotations

from kvmvm.record import record

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

GDT_GPA = 0x500            # boot GDT (null, null, code 0x10, data 0x18, TSS 0x20)
PVH_START_INFO = 0x6000    # hvm_start_info, then its memory map
ZERO_PAGE = 0x7000         # Linux boot_params
BOOT_STACK = 0x8FF0        # initial stack for the 64-bit entry
PML4 = 0x9000              # identity page tables: PML4, PDPT, 4 PDs (0x9000-0xefff)
CMDLINE = 0x20000
CMDLINE_MAX = 4096         # bytes including the NUL
EBDA_START = 0x9FC00       # MP table lives here; RAM below it is usable
BIOS_START = 0xA0000       # legacy hole 640 KiB - 1 MiB (not RAM)
ACPI_START = 0xE0000       # RSDP (found by the BIOS-area scan) and the other tables (< VMGENID_GPA)
ACPI_END = 0x100000
VMGENID_GPA = 0xFF000      # the 16-byte VM generation ID (last page of the ACPI area)
VMGENID_GED_IRQ = 3        # GSI of the ACPI Generic Event Device that notifies a new ID
HIMEM = 0x100000           # kernels load at or above this
MMIO_GAP_START = 3 * GiB
MMIO_GAP_END = 4 * GiB
BOOT_TIMER_GPA = 0xD0000000          # Firecracker's boot-timer address and value (123)
VIRTIO_MMIO_BASE = 0xD0001000
VIRTIO_MMIO_SIZE = 0x1000
ACPI_PM_PORT = 0x3C0       # hardware-reduced ACPI sleep control/status + reset register
PVPANIC_PORT = 0x505
IOAPIC_GPA = 0xFEC00000
LAPIC_GPA = 0xFEE00000

E820_RAM = 1
E820_RESERVED = 2


@record(frozen=True)
class RamLayout:
    """Guest RAM as KVM memory regions: [(gpa, size)]."""

    size: int

    @property
    def regions(self) -> list[tuple[int, int]]:
        low = min(self.size, MMIO_GAP_START)
        out = [(0, low)]
        if self.size > low:
            out.append((MMIO_GAP_END, self.size - low))
        return out

    def contains(self, gpa: int, length: int) -> bool:
        return any(b <= gpa and gpa + length <= b + s for b, s in self.regions)

    @property
    def low_end(self) -> int:
        """End of RAM below the 3 GiB hole."""
        return self.regions[0][1]

    def e820(self) -> list[tuple[int, int, int]]:
        """The memory map a guest sees: (addr, size, type)."""
        out = [(0, EBDA_START, E820_RAM)]
        if self.low_end > HIMEM:
            out.append((HIMEM, self.low_end - HIMEM, E820_RAM))
        for b, s in self.regions[1:]:
            out.append((b, s, E820_RAM))
        return out
