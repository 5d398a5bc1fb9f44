"""The Intel MultiProcessor table, for kernels booted with acpi=off (ACPI's MADT says the
same to the others): processors, one ISA bus, the IOAPIC and its interrupt routing."""

from __future__ import annotations

import struct

from kvmvm.boot.layout import IOAPIC_GPA, LAPIC_GPA

MPTABLE_GPA = 0xF0000      # in the BIOS area Linux scans for "_MP_"
IRQ_PINS = 24
APIC_VERSION = 0x14


def _checksum(b: bytes) -> int:
    return (-sum(b)) & 0xFF


def build(ncpus: int, base: int = MPTABLE_GPA) -> bytes:
    """Floating pointer at `base`, configuration table right after it."""
    ioapic_id = ncpus
    entries = []
    for i in range(ncpus):
        flags = 1 | (2 if i == 0 else 0)               # enabled, BSP
        entries.append(struct.pack("<BBBBII8x", 0, i, APIC_VERSION, flags, 0x600, 0x201))
    entries.append(struct.pack("<BB6s", 1, 0, b"ISA   "))
    entries.append(struct.pack("<BBBBI", 2, ioapic_id, 0x11, 1, IOAPIC_GPA))
    for irq in range(16):
        entries.append(struct.pack("<BBHBBBB", 3, 0, 0, 0, irq, ioapic_id, irq))
    entries.append(struct.pack("<BBHBBBB", 4, 3, 0, 0, 0, 0xFF, 0))   # ExtINT -> LINT0
    entries.append(struct.pack("<BBHBBBB", 4, 1, 0, 0, 0, 0xFF, 1))   # NMI -> LINT1
    body = b"".join(entries)
    hdr = bytearray(struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", 44 + len(body), 4, 0, b"KVMVM   ",
                                b"MICROVM     ", 0, 0, len(entries), LAPIC_GPA, 0, 0, 0))
    table = hdr + body
    table[7] = _checksum(table)
    fp = bytearray(struct.pack("<4sIBBB5s", b"_MP_", base + 16, 1, 4, 0, b"\0" * 5))
    fp[10] = _checksum(fp)
    return bytes(fp) + bytes(table)
