"""ACPI tables for a hardware-reduced microVM: RSDP, XSDT, FADT, MADT and a DSDT.

The DSDT lists each virtio-mmio device (LNRO0005, as Linux's virtio_mmio driver matches),
the pvpanic port, the VM Generation ID (VMGENCTR, with a Generic Event Device that
notifies a new ID after a fork or restore) and the S5 sleep state, so kernels without virtio_mmio.device= on their
command line still find their devices, and `poweroff`/`reboot` reach the VMM through the
FADT's sleep-control and reset registers.
"""

from __future__ import annotations

import struct
from kvmvm.record import record

from kvmvm.boot import aml
from kvmvm.boot.layout import (ACPI_PM_PORT, ACPI_START, IOAPIC_GPA, LAPIC_GPA, PVPANIC_PORT,
                               VMGENID_GED_IRQ, VMGENID_GPA)

OEM_ID = b"KVMVM "
OEM_TABLE_ID = b"KVMVMVM "
CREATOR_ID = b"KVMV"
ACPI_RESET_VALUE = 0x01     # written to ACPI_PM_PORT; S5 is SLP_TYP 5 | SLP_EN there
S5_SLP_TYP = 5


@record(frozen=True)
class AcpiDevice:
    """A virtio-mmio window for the DSDT."""

    base: int
    size: int
    irq: int


def checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def table(sig: bytes, revision: int, body: bytes) -> bytes:
    length = 36 + len(body)
    hdr = struct.pack("<4sIBB6s8sI4sI", sig, length, revision, 0, OEM_ID, OEM_TABLE_ID, 1,
                      CREATOR_ID, 1)
    t = bytearray(hdr + body)
    t[9] = checksum(t)
    return bytes(t)


def gas_io(port: int, width_bits: int = 8) -> bytes:
    """Generic Address Structure for a system-I/O register."""
    return struct.pack("<BBBBQ", 1, width_bits, 0, 1, port)


def fadt(dsdt_gpa: int) -> bytes:
    body = bytearray(276 - 36)

    def put(off, fmt, *v):
        struct.pack_into(fmt, body, off - 36, *v)

    put(40, "<I", dsdt_gpa)
    put(109, "<H", (1 << 2) | (1 << 4) | (1 << 5))   # IAPC_BOOT_ARCH: no VGA, no MSI, no CMOS RTC
    put(112, "<I", (1 << 20) | (1 << 10) | (1 << 4) | (1 << 5))  # HW_REDUCED, RESET_REG_SUP, PWR/SLP buttons as control methods
    body[116 - 36:128 - 36] = gas_io(ACPI_PM_PORT)   # RESET_REG
    put(128, "<B", ACPI_RESET_VALUE)
    put(131, "<B", 3)                                 # FADT minor version (6.3)
    put(140, "<Q", dsdt_gpa)                          # X_DSDT
    body[244 - 36:256 - 36] = gas_io(ACPI_PM_PORT)   # SLEEP_CONTROL_REG
    body[256 - 36:268 - 36] = gas_io(ACPI_PM_PORT + 1)  # SLEEP_STATUS_REG
    put(268, "<Q", int.from_bytes(b"KVMVM\0\0\0", "little"))  # hypervisor vendor identity
    return table(b"FACP", 6, bytes(body))


def madt(ncpus: int) -> bytes:
    body = struct.pack("<II", LAPIC_GPA, 0)          # no dual 8259 (PCAT_COMPAT off)
    for i in range(ncpus):
        body += struct.pack("<BBBBI", 0, 8, i, i, 1)  # processor local APIC, enabled
    body += struct.pack("<BBBBII", 1, 12, ncpus, 0, IOAPIC_GPA, 0)  # IOAPIC, GSI base 0
    return table(b"APIC", 5, body)


def dsdt(devices: list[AcpiDevice]) -> bytes:
    devs = [
        aml.device(f"V{i:03X}",
                   aml.name("_HID", aml.string("LNRO0005")),
                   aml.name("_UID", aml.integer(i)),
                   aml.name("_CRS", aml.resource_template(aml.memory32_fixed(d.base, d.size),
                                                          aml.interrupt(d.irq))))
        for i, d in enumerate(devices)
    ]
    # COM1: with hardware-reduced ACPI Linux takes the UART's IRQ from here (8250_pnp)
    com1 = aml.device("COM1", aml.name("_HID", aml.eisa_id("PNP0501")),
                      aml.name("_UID", aml.integer(0)),
                      aml.name("_CRS", aml.resource_template(aml.io_port(0x3F8, 8),
                                                             aml.irq_no_flags(4))))
    pevt = aml.device("PEVT", aml.name("_HID", aml.string("QEMU0001")),
                      aml.name("_CRS", aml.resource_template(aml.io_port(PVPANIC_PORT, 1))))
    # VM Generation ID (Linux drivers/virt/vmgenid.c): ADDR is the ID's guest-physical address
    vgen = aml.device("VGEN", aml.name("_HID", aml.string("VMGENCTR")),
                      aml.name("_CID", aml.string("VM_GEN_COUNTER")),
                      aml.name("_DDN", aml.string("VM_Gen_Counter")),
                      aml.name("ADDR", aml.package(aml.integer(VMGENID_GPA & 0xFFFFFFFF),
                                                   aml.integer(VMGENID_GPA >> 32))))
    # its change notification: an edge on the GED's interrupt runs _EVT
    ged = aml.device("GED0", aml.name("_HID", aml.string("ACPI0013")),
                     aml.name("_CRS", aml.resource_template(aml.interrupt(VMGENID_GED_IRQ))),
                     aml.method("_EVT", 1, aml.notify("\\_SB_.VGEN", 0x80)))
    body = (aml.scope("\\_SB_", com1, pevt, vgen, ged, *devs)
            + aml.name("\\_S5_", aml.package(aml.integer(S5_SLP_TYP), aml.integer(0))))
    return table(b"DSDT", 6, body)


def rsdp(xsdt_gpa: int) -> bytes:
    r = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, 2, 0, 36, xsdt_gpa, 0, b"\0\0\0"))
    r[8] = checksum(r[:20])
    r[32] = checksum(r)
    return bytes(r)


def build(ncpus: int, devices: list[AcpiDevice], base: int = ACPI_START) -> tuple[int, bytes]:
    """All tables laid out from `base`: returns (RSDP address, blob to write at base)."""
    rsdp_gpa = base                       # 16-byte aligned, inside the BIOS scan area
    dsdt_gpa = base + 0x40
    d = dsdt(devices)
    fadt_gpa = _align(dsdt_gpa + len(d))
    f = fadt(dsdt_gpa)
    madt_gpa = _align(fadt_gpa + len(f))
    m = madt(ncpus)
    xsdt_gpa = _align(madt_gpa + len(m))
    x = table(b"XSDT", 1, struct.pack("<QQ", fadt_gpa, madt_gpa))
    end = xsdt_gpa + len(x)
    if end > VMGENID_GPA:
        raise ValueError("ACPI tables do not fit below the VM generation ID page")
    blob = bytearray(end - base)
    for gpa, data in ((rsdp_gpa, rsdp(xsdt_gpa)), (dsdt_gpa, d), (fadt_gpa, f), (madt_gpa, m),
                      (xsdt_gpa, x)):
        blob[gpa - base:gpa - base + len(data)] = data
    return rsdp_gpa, bytes(blob)


def _align(v: int, a: int = 16) -> int:
    return (v + a - 1) & ~(a - 1)
