"""bzImage setup-header checks and the ACPI tables / AML kvmvm writes."""

import struct

import pytest

from kvmvm.boot import acpi, aml, bzimage
from kvmvm.boot.layout import ACPI_START, MiB, RamLayout
from kvmvm.errors import ImageError


def make_bz(protocol=0x020F, setup_sects=4, xload=1, loadflags=1, syssize_bytes=0x2000,
            pref=0x1000000, init_size=0x800000, file_extra=0):
    setup = (setup_sects + 1) * 512
    data = bytearray(setup + syssize_bytes + file_extra)
    data[0x1F1] = setup_sects
    struct.pack_into("<I", data, 0x1F4, syssize_bytes // 16)
    struct.pack_into("<H", data, 0x1FE, 0xAA55)
    data[0x200:0x202] = b"\xeb\x66"           # jmp over the header
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x206, protocol)
    data[0x211] = loadflags
    struct.pack_into("<I", data, 0x22C, 0x7FFFFFFF)
    struct.pack_into("<H", data, 0x236, xload)
    struct.pack_into("<I", data, 0x238, 2047)
    struct.pack_into("<Q", data, 0x258, pref)
    struct.pack_into("<I", data, 0x260, init_size)
    data[setup:setup + 4] = b"KERN"
    return bytes(data)


def test_good_bzimage():
    k = bzimage.parse(make_bz(), "bz")
    assert k.protocol == 0x020F and k.load_addr == 0x1000000 and k.entry64 == 0x1000200
    assert k.kernel[:4] == b"KERN" and k.cmdline_size == 2047
    assert k.setup_header[0] == 4 and k.setup_header[0x202 - 0x1F1:0x206 - 0x1F1] == b"HdrS"
    bzimage.check_fits(k, RamLayout(128 * MiB))


@pytest.mark.parametrize("kw,msg", [
    (dict(protocol=0x020B), "bz: boot protocol 2.11 is too old (need 2.12 or later)"),
    (dict(xload=0), "bz: kernel has no 64-bit entry point (XLF_KERNEL_64 is not set)"),
    (dict(loadflags=0), "bz: bzImage is not a high-loaded (bzImage) kernel (zImage is not supported)"),
])
def test_bad_header_fields(kw, msg):
    with pytest.raises(ImageError) as e:
        bzimage.parse(make_bz(**kw), "bz")
    assert str(e.value) == msg


def test_truncated_kernel_part():
    data = make_bz()[:-16]
    with pytest.raises(ImageError, match=r"^bz: kernel \(8192 bytes after the setup code\) runs past the end of the file \(truncated image\?\)$"):
        bzimage.parse(data, "bz")


def test_bad_boot_flag_and_signature():
    data = bytearray(make_bz())
    data[0x1FE] = 0
    with pytest.raises(ImageError, match=r"^bz: bzImage boot flag is not 0xAA55$"):
        bzimage.parse(bytes(data), "bz")
    with pytest.raises(ImageError, match=r'^bz: not a bzImage \(no "HdrS" setup header signature\)$'):
        bzimage.parse(b"\0" * 0x300, "bz")
    with pytest.raises(ImageError, match=r"^bz: too short for a bzImage setup header"):
        bzimage.parse(make_bz()[:0x210], "bz")


def test_kernel_too_big_for_memory():
    k = bzimage.parse(make_bz(init_size=200 * MiB), "bz")
    with pytest.raises(ImageError, match=r"^bz: kernel needs 200 MiB from 0x1000000 \(init_size\) but guest memory is 128 MiB$"):
        bzimage.check_fits(k, RamLayout(128 * MiB))


def sum8(b: bytes) -> int:
    return sum(b) & 0xFF


def test_acpi_tables_checksums_and_links():
    devs = [acpi.AcpiDevice(0xD0001000, 0x1000, 5), acpi.AcpiDevice(0xD0002000, 0x1000, 6)]
    rsdp_gpa, blob = acpi.build(4, devs)
    assert rsdp_gpa == ACPI_START and rsdp_gpa % 16 == 0

    def at(gpa, n):
        return blob[gpa - ACPI_START:gpa - ACPI_START + n]

    rsdp = at(rsdp_gpa, 36)
    assert rsdp[:8] == b"RSD PTR " and rsdp[15] == 2
    assert sum8(rsdp[:20]) == 0 and sum8(rsdp) == 0
    xsdt_gpa = struct.unpack_from("<Q", rsdp, 24)[0]

    def tbl(gpa, sig):
        hdr = at(gpa, 36)
        assert hdr[:4] == sig
        length = struct.unpack_from("<I", hdr, 4)[0]
        t = at(gpa, length)
        assert sum8(t) == 0, f"{sig} checksum"
        return t

    xsdt = tbl(xsdt_gpa, b"XSDT")
    fadt_gpa, madt_gpa = struct.unpack_from("<QQ", xsdt, 36)
    fadt = tbl(fadt_gpa, b"FACP")
    assert len(fadt) == 276 and fadt[8] == 6
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & (1 << 20) and flags & (1 << 10)          # HW-reduced, reset register
    assert struct.unpack_from("<BBBBQ", fadt, 116) == (1, 8, 0, 1, 0x3C0) and fadt[128] == 1
    assert struct.unpack_from("<Q", fadt, 244 + 4)[0] == 0x3C0
    dsdt_gpa = struct.unpack_from("<Q", fadt, 140)[0]
    dsdt = tbl(dsdt_gpa, b"DSDT")
    assert dsdt.count(b"LNRO0005") == 2 and b"QEMU0001" in dsdt and b"_S5_" in dsdt
    assert struct.pack("<BHBII", 0x86, 9, 1, 0xD0002000, 0x1000) in dsdt
    assert struct.pack("<BHBBI", 0x89, 6, 3, 1, 6) in dsdt
    madt = tbl(madt_gpa, b"APIC")
    lapics = [madt[i:i + 8] for i in range(44, 44 + 4 * 8, 8)]
    assert [l[3] for l in lapics] == [0, 1, 2, 3] and all(l[0] == 0 and l[4] == 1 for l in lapics)
    assert madt[44 + 32] == 1 and struct.unpack_from("<I", madt, 44 + 32 + 4)[0] == 0xFEC00000


@pytest.mark.parametrize("n,enc", [(0x3E, b"\x3f"), (0x3F, b"\x41\x04"), (0xFFD, b"\x4f\xff"),
                                   (0xFFE, b"\x81\x00\x01")])
def test_aml_pkg_length(n, enc):
    assert aml.pkg_length(n) == enc


def test_aml_names_and_integers():
    assert aml.name_string("\\_SB_") == b"\\_SB_"
    assert aml.name_string("_SB.PCI0") == b"\x2e_SB_PCI0"
    assert aml.integer(0) == b"\0" and aml.integer(1) == b"\1"
    assert aml.integer(0x1234) == b"\x0b\x34\x12" and aml.integer(1 << 40)[0] == 0x0E
    with pytest.raises(ValueError):
        aml.name_seg("TOOLONG")


def test_many_devices_still_fit():
    acpi.build(64, [acpi.AcpiDevice(0xD0001000 + i * 0x1000, 0x1000, 5 + i % 18) for i in range(32)])


def test_mptable_checksums_and_entries():
    from kvmvm.boot import mptable

    blob = mptable.build(3, base=0xF0000)
    fp = blob[:16]
    assert fp[:4] == b"_MP_" and sum8(fp) == 0
    assert struct.unpack_from("<I", fp, 4)[0] == 0xF0010
    table = blob[16:]
    length, = struct.unpack_from("<H", table, 4)
    assert table[:4] == b"PCMP" and length == len(table) and sum8(table) == 0
    count, = struct.unpack_from("<H", table, 34)
    types, off = [], 44
    for _ in range(count):
        types.append(table[off])
        off += 20 if table[off] == 0 else 8
    assert off == length
    assert types.count(0) == 3 and types.count(2) == 1 and types.count(3) == 16
    assert table[44 + 3] == 3       # the first processor is enabled and the BSP
