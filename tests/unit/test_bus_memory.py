"""The C Bus and GuestMemory, driven without KVM."""

import pytest

from kvmvm.bindings import Bus, GuestMemory, cpuid_shape, ffi, lib
from kvmvm.errors import BusError, GuestMemoryError


class Recorder:
    def __init__(self, fill=0xAB):
        self.writes = []
        self.reads = []
        self.fill = fill

    def read(self, offset, size):
        self.reads.append((offset, size))
        return bytes([self.fill]) * size

    def write(self, offset, data):
        self.writes.append((offset, data))


def test_dispatch_gives_offsets_and_unmapped_reads_zero():
    bus, dev = Bus(), Recorder()
    bus.insert(0x3F8, 8, dev)
    assert bus.write(0x3FA, b"\x01")
    assert dev.writes == [(2, b"\x01")]
    assert bus.read(0x3FF, 1) == (True, b"\xab")
    assert dev.reads == [(7, 1)]
    assert bus.read(0x400, 4) == (False, b"\0\0\0\0")
    assert not bus.write(0x3F7, b"\x01")


def test_access_straddling_range_end_is_not_dispatched():
    bus, dev = Bus(), Recorder()
    bus.insert(0x1000, 4, dev)
    assert bus.read(0x1002, 4) == (False, b"\0" * 4)
    assert dev.reads == []


@pytest.mark.parametrize("base,length", [(0x100, 0x10), (0xF8, 0x10), (0x108, 4), (0xF0, 0x100)])
def test_overlap_rejected(base, length):
    bus = Bus()
    bus.insert(0x100, 0x10, Recorder())
    with pytest.raises(BusError, match="overlaps an existing range"):
        bus.insert(base, length, Recorder())
    assert len(bus) == 1


def test_adjacent_ranges_allowed_and_sorted():
    bus, a, b, c = Bus(), Recorder(1), Recorder(2), Recorder(3)
    bus.insert(0x200, 0x10, b)
    bus.insert(0x100, 0x100, a)
    bus.insert(0x210, 0x10, c)
    assert [bus.read(x, 1)[1][0] for x in (0x1FF, 0x200, 0x20F, 0x210)] == [1, 2, 2, 3]


def test_zero_length_rejected():
    with pytest.raises(BusError, match="is empty"):
        Bus().insert(0x10, 0, Recorder())


def test_wrapping_range_rejected_but_top_of_space_allowed():
    bus = Bus()
    with pytest.raises(BusError, match="wraps past the end"):
        bus.insert(2**64 - 0x10, 0x20, Recorder())
    bus.insert(2**64 - 0x10, 0x10, Recorder())
    assert bus.read(2**64 - 1, 1)[0]


def test_remove():
    bus, dev = Bus(), Recorder()
    bus.insert(0x100, 0x10, dev)
    bus.remove(0x100)
    assert bus.read(0x100, 1) == (False, b"\0")
    with pytest.raises(BusError):
        bus.remove(0x100)


def test_python_device_exception_does_not_escape():
    class Boom:
        broken = False

        def read(self, o, s):
            raise RuntimeError("boom")

        def write(self, o, d):
            raise RuntimeError("boom")

        def mark_broken(self):
            self.broken = True

    bus, dev = Bus(), Boom()
    bus.insert(0x10, 1, dev)
    assert bus.read(0x10, 1) == (True, b"\0")
    assert dev.broken


def test_guest_memory_bounds():
    gm = GuestMemory()
    gm.add(0, 0x10000)
    gm.add(0x100000, 0x1000)
    gm.write(0xFFF0, b"x" * 16)
    assert gm.read(0xFFF0, 16) == b"x" * 16
    for addr, n in [(0xFFF1, 16), (0x10000, 1), (0x100FFF, 2), (0x50000, 4), (2**64 - 1, 2),
                    (0x100000, 2**64 - 1), (0x8000, 0x10000)]:
        assert not gm.contains(addr, n)
        if n <= 0x10000:
            with pytest.raises(GuestMemoryError, match="outside guest memory"):
                gm.read(addr, n)
            with pytest.raises(GuestMemoryError, match="outside guest memory"):
                gm.write(addr, b"z" * n)
    assert gm.contains(0x100000, 0x1000)
    # one access may not span two regions, even adjacent ones
    gm2 = GuestMemory()
    gm2.add(0, 0x1000)
    gm2.add(0x1000, 0x1000)
    assert not gm2.contains(0xFF0, 0x20)


def test_guest_memory_rejects_overlap_and_unaligned():
    gm = GuestMemory()
    gm.add(0, 0x2000)
    with pytest.raises(GuestMemoryError):
        gm.add(0x1000, 0x2000)
    with pytest.raises(GuestMemoryError):
        gm.add(0x10001, 0x1000)
    with pytest.raises(GuestMemoryError):
        gm.add(0x10000, 0)


def test_gmem_check_is_overflow_safe():
    gm = lib.kvmvm_gmem_new()
    try:
        assert lib.kvmvm_gmem_add(gm, 0x1000, 0x1000) == 0
        assert lib.kvmvm_gmem_check(gm, 0x1000, 0x1000) == 0
        assert lib.kvmvm_gmem_check(gm, 0x1001, 2**64 - 1) < 0
        assert lib.kvmvm_gmem_check(gm, 2**64 - 0x10, 0x20) < 0
    finally:
        lib.kvmvm_gmem_free(gm)


def leaf(fn, idx=0, eax=0, ebx=0, ecx=0, edx=0):
    return (fn, idx, 0, eax, ebx, ecx, edx)


def test_cpuid_topology():
    entries = [leaf(1, ebx=0x00000800), leaf(0xB, 0), leaf(0xB, 1), leaf(0xB, 2),
               leaf(4, 0, eax=0x121), leaf(4, 3, eax=0x163), leaf(0xA, eax=7)]
    out = {(e[0], e[1]): e for e in cpuid_shape(entries, vcpu_id=2, ncpus=3)}
    f1 = out[(1, 0)]
    assert f1[4] >> 24 == 2 and (f1[4] >> 16) & 0xFF == 3 and f1[4] & 0xFFFF == 0x800
    assert f1[6] & (1 << 28) and f1[5] & (1 << 31)
    assert out[(0xB, 0)][3:] == (0, 1, 0x100, 2)
    assert out[(0xB, 1)][3:] == (2, 3, 0x201, 2)
    assert out[(0xB, 2)][5] == 2 and out[(0xB, 2)][4] == 0
    assert out[(4, 0)][3] >> 26 == 2 and (out[(4, 0)][3] >> 14) & 0xFFF == 0
    assert (out[(4, 3)][3] >> 14) & 0xFFF == 2
    assert out[(0xA, 0)][3:] == (0, 0, 0, 0)


def test_cpuid_single_cpu_clears_htt():
    out = cpuid_shape([leaf(1, edx=1 << 28)], 0, 1)
    assert not out[0][6] & (1 << 28)


def test_cpuid_bad_args():
    with pytest.raises(ValueError):
        cpuid_shape([leaf(1)], 3, 2)


@pytest.mark.parametrize("map_", [False, True])
def test_load_file_reads_or_maps_copy_on_write(tmp_path, map_):
    """Image bytes land in guest memory exactly, mapped or read, whatever the alignment;
    the guest's writes never reach the file; a range past the file's end is refused."""
    import os

    blob = bytes((i * 7 + 3) & 0xFF for i in range(5 * 4096 + 123))
    f = tmp_path / "image"
    f.write_bytes(blob)
    fd = os.open(f, os.O_RDONLY)
    try:
        gm = GuestMemory()
        gm.add(0x100000, 0x100000)
        cases = [(0x100000, 0, len(blob)),            # page-aligned: whole pages mapped, tail read
                 (0x140123, 0x123, 3 * 4096),          # same page offset: head read, middle mapped
                 (0x180000, 0x10, 4096 * 2),           # offsets disagree: read
                 (0x1c0000, 4096, 100)]                # less than a page: read
        for gpa, off, n in cases:
            gm.load_file(gpa, fd, off, n, map=map_)
            assert gm.read(gpa, n) == blob[off:off + n]
            assert gm.read(gpa + n, 16) == bytes(16)   # nothing beyond
        gm.write(0x100000 + 4096, b"guest")
        assert f.read_bytes() == blob and gm.read(0x100000 + 4096, 5) == b"guest"
        with pytest.raises(GuestMemoryError):
            gm.load_file(0x100000, fd, len(blob) - 10, 20, map=map_)   # past the end of the file
        with pytest.raises(GuestMemoryError):
            gm.load_file(0x1ff000, fd, 0, 8192, map=map_)              # past the end of RAM
    finally:
        os.close(fd)
