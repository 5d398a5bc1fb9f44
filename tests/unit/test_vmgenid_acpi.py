"""The DSDT's VM Generation ID device and the GED that notifies it (checked by decoding the
AML bytes kvmvm writes; `iasl -d` shows the same: VGEN with ADDR, GED0 with _EVT)."""
from __future__ import annotations

import struct

import pytest

from kvmvm.boot import acpi, aml, layout

pytestmark = pytest.mark.host


def test_vgen_device_names_the_id_address():
    d = acpi.dsdt([])
    vgen = aml.device("VGEN", aml.name("_HID", aml.string("VMGENCTR")),
                      aml.name("_CID", aml.string("VM_GEN_COUNTER")),
                      aml.name("_DDN", aml.string("VM_Gen_Counter")),
                      aml.name("ADDR", aml.package(aml.integer(layout.VMGENID_GPA), aml.integer(0))))
    assert vgen in d
    assert b"\x0c" + struct.pack("<I", layout.VMGENID_GPA) in vgen   # DWordConst 0xff000


def test_ged_notifies_vgen_on_its_interrupt():
    d = acpi.dsdt([])
    evt = b"\x14" + aml.pkg_length(len(b"_EVT\x01" + b"\x86\\\x2e_SB_VGEN\x0a\x80")) + \
        b"_EVT\x01" + b"\x86\\\x2e_SB_VGEN\x0a\x80"
    assert evt in d                                   # Method(_EVT, 1) { Notify(\_SB.VGEN, 0x80) }
    assert aml.interrupt(layout.VMGENID_GED_IRQ) in d  # Interrupt(Edge, ActiveHigh) { 3 }
    assert b"ACPI0013" in d


def test_id_page_is_outside_the_tables_and_ram():
    rsdp, blob = acpi.build(4, [acpi.AcpiDevice(layout.VIRTIO_MMIO_BASE + i * 0x1000, 0x1000, 5 + i)
                                for i in range(18)])
    assert rsdp + len(blob) <= layout.VMGENID_GPA < layout.HIMEM
    assert all(not (a <= layout.VMGENID_GPA < a + s)
               for a, s, t in layout.RamLayout(128 << 20).e820() if t == layout.E820_RAM)
