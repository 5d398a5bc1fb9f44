"""Memory layout, PVH start_info and boot_params encodings."""

import struct

from kvmvm.boot import bootparams, pvh
from kvmvm.boot.layout import EBDA_START, GiB, HIMEM, MiB, RamLayout


def test_small_ram_is_one_region():
    r = RamLayout(128 * MiB)
    assert r.regions == [(0, 128 * MiB)]
    assert r.e820() == [(0, EBDA_START, 1), (HIMEM, 127 * MiB, 1)]


def test_ram_above_3g_moves_to_4g():
    r = RamLayout(4 * GiB)
    assert r.regions == [(0, 3 * GiB), (4 * GiB, 1 * GiB)]
    assert r.contains(4 * GiB, GiB) and not r.contains(3 * GiB, 1)
    assert r.e820()[-1] == (4 * GiB, GiB, 1)


def test_contains_checks_end():
    r = RamLayout(16 * MiB)
    assert r.contains(16 * MiB - 4, 4)
    assert not r.contains(16 * MiB - 4, 5)


def test_pvh_start_info():
    e820 = RamLayout(64 * MiB).e820()
    blob = pvh.start_info(0x20000, e820, 0, initrd=(0x3000000, 0x1000), base=0x6000)
    magic, ver, flags, nmod, modaddr, cmd, rsdp, mm, mmn, _ = struct.unpack_from("<IIIIQQQQII", blob)
    assert (magic, ver, nmod, cmd, mmn) == (0x336EC578, 1, 1, 0x20000, 2)
    assert mm == 0x6000 + 56
    a, s, t, _ = struct.unpack_from("<QQII", blob, 56 + 24)
    assert (a, s, t) == (HIMEM, 63 * MiB, 1)
    assert modaddr == 0x6000 + 56 + 48
    assert struct.unpack_from("<QQ", blob, 56 + 48) == (0x3000000, 0x1000)


def test_boot_params():
    bp = bootparams.build(0x20000, 10, [(0, 0x9FC00, 1), (HIMEM, MiB, 1)], initrd=(0x5000000, 0x2000))
    assert len(bp) == 4096
    assert bp[0x202:0x206] == b"HdrS"
    assert struct.unpack_from("<I", bp, 0x228)[0] == 0x20000
    assert bp[0x1E8] == 2
    assert struct.unpack_from("<QQI", bp, 0x2D0 + 20) == (HIMEM, MiB, 1)
    assert struct.unpack_from("<II", bp, 0x218) == (0x5000000, 0x2000)
    assert bp[0x210] == 0xFF


def test_virtio_cmdline_auto(tmp_path, monkeypatch):
    """auto: tiny guests get virtio_mmio.device=; Linux with ACPI finds devices in the DSDT."""
    from kvmvm.devices import VirtioSlot
    from kvmvm.machine import Machine, MachineConfig
    from tests.unit.elfgen import make_elf, note

    monkeypatch.setenv("KVMVM_ALLOW_PVM", "1")      # only parsing here, no VM
    tiny = tmp_path / "tiny.elf"
    tiny.write_bytes(make_elf())
    slot = VirtioSlot("rng", 0xD0001000, 0x1000, 5)

    def line(kernel, **kw):
        m = Machine(MachineConfig(kernel=str(kernel), cmdline="console=ttyS0", **kw))
        m.virtio = [slot]
        return m.full_cmdline()

    assert line(tiny) == "console=ttyS0 virtio_mmio.device=4K@0xd0001000:5"
    assert line(tiny, virtio_cmdline="off") == "console=ttyS0"
    linux = tmp_path / "vmlinux"
    linux.write_bytes(make_elf(extra_notes=note(b"Linux", 6, b"\0\0\0\0")))
    assert line(linux) == "console=ttyS0"
    assert line(linux, acpi=False) == "console=ttyS0 virtio_mmio.device=4K@0xd0001000:5"
    assert line(linux, virtio_cmdline="on") == "console=ttyS0 virtio_mmio.device=4K@0xd0001000:5"
