"""The C virtqueue (native/virtq.c) driven from Python: a driver-side helper writes split
rings into a stand-alone guest memory, the C side pops chains. No KVM needed."""

from __future__ import annotations

import struct

import pytest

from kvmvm.bindings import GuestMemory, ffi, lib

RAM = 0x100000          # 1 MiB of guest RAM at 0
DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
EFAULT, EINVAL, ELOOP, E2BIG, EMSGSIZE = 14, 22, 40, 7, 90


class Driver:
    """The driver's side of one split virtqueue, written with plain guest-memory writes."""

    def __init__(self, size: int = 8):
        self.mem = GuestMemory()
        self.mem.add(0, RAM)
        self.size = size
        self.avail_idx = 0
        err = ffi.new("int *")
        q = lib.kvmvm_virtq_new(self.mem._gm, size, DESC, AVAIL, USED, err)
        assert q != ffi.NULL, err[0]
        self.q = ffi.gc(q, lib.kvmvm_virtq_free)

    def desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0, table: int = DESC):
        self.mem.write(table + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def publish(self, head: int) -> None:
        self.mem.write(AVAIL + 4 + 2 * (self.avail_idx % self.size), struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.write(AVAIL + 2, struct.pack("<H", self.avail_idx))

    def pop(self):
        segs = ffi.new("struct kvmvm_virtq_seg[]", 1024)
        head = ffi.new("uint32_t *")
        n = lib.kvmvm_virtq_pop(self.q, segs, 1024, head)
        if n <= 0:
            return n
        return head[0], [(segs[i].addr, segs[i].len, bool(segs[i].write)) for i in range(n)]

    def used(self) -> tuple[int, list]:
        idx = struct.unpack("<H", self.mem.read(USED + 2, 2))[0]
        elems = [struct.unpack("<II", self.mem.read(USED + 4 + 8 * i, 8)) for i in range(min(idx, self.size))]
        return idx, elems


def test_empty_ring_pops_nothing():
    assert Driver().pop() == 0


def test_chain_of_readable_then_writable():
    d = Driver()
    d.desc(0, 0x10000, 16, F_NEXT, 1)
    d.desc(1, 0x20000, 512, F_NEXT | F_WRITE, 2)
    d.desc(2, 0x30000, 1, F_WRITE)
    d.publish(0)
    head, segs = d.pop()
    assert head == 0
    assert segs == [(0x10000, 16, False), (0x20000, 512, True), (0x30000, 1, True)]
    assert lib.kvmvm_virtq_push(d.q, head, 513) == 0
    assert d.used() == (1, [(0, 513)])
    assert d.pop() == 0


def test_indirect_table():
    d = Driver()
    table = 0x8000
    d.desc(0, 0x10000, 16, F_NEXT, 1, table=table)
    d.desc(1, 0x20000, 100, F_WRITE, 0, table=table)
    d.desc(3, table, 32, F_INDIRECT)
    d.publish(3)
    head, segs = d.pop()
    assert head == 3 and segs == [(0x10000, 16, False), (0x20000, 100, True)]


def test_ring_wraps_around_the_avail_index():
    d = Driver(size=4)
    for i in range(10):
        d.desc(i % 4, 0x10000, 8, F_WRITE)
        d.publish(i % 4)
        head, _ = d.pop()
        lib.kvmvm_virtq_push(d.q, head, 8)
    assert d.used()[0] == 10


@pytest.mark.parametrize("addr,length,err", [
    (RAM - 8, 16, EFAULT),                      # runs past the end of RAM
    (RAM + 0x1000, 1, EFAULT),                  # starts outside
    (0xFFFFFFFFFFFFF000, 0x2000, EFAULT),       # addr + len wraps 2^64
    (0x10000, 0xFFFFFFFF, EMSGSIZE),            # huge length: over the total cap first
    (0x10000, 0x200000, EFAULT),                # bigger than RAM, under the cap
])
def test_buffer_outside_memory_is_rejected(addr, length, err):
    d = Driver()
    d.desc(0, addr, length, F_WRITE)
    d.publish(0)
    assert d.pop() == -err


def test_descriptor_loop_is_bounded():
    d = Driver()
    d.desc(0, 0x10000, 8, F_NEXT, 1)
    d.desc(1, 0x10000, 8, F_NEXT, 0)
    d.publish(0)
    assert d.pop() == -ELOOP


def test_self_loop_in_indirect_table():
    d = Driver()
    table = 0x8000
    d.desc(0, 0x10000, 8, F_NEXT, 0, table=table)
    d.desc(0, table, 16, F_INDIRECT)
    d.publish(0)
    assert d.pop() == -ELOOP


@pytest.mark.parametrize("length", [0, 8, 16 * 4096])
def test_bad_indirect_table_size(length):
    d = Driver()
    d.desc(0, 0x8000, length, F_INDIRECT)
    d.publish(0)
    assert d.pop() == -EINVAL


def test_nested_indirect_is_rejected():
    d = Driver()
    d.desc(0, 0x8000, 16, F_INDIRECT, table=0x8000)
    d.desc(0, 0x8000, 16, F_INDIRECT)
    d.publish(0)
    assert d.pop() == -EINVAL


def test_next_index_out_of_table():
    d = Driver()
    d.desc(0, 0x10000, 8, F_NEXT, 200)
    d.publish(0)
    assert d.pop() == -EINVAL


def test_head_out_of_range_and_avail_idx_too_far():
    d = Driver()
    d.publish(5000)
    assert d.pop() == -EINVAL
    d2 = Driver()
    d2.mem.write(AVAIL + 2, struct.pack("<H", 100))   # 100 new entries in an 8-entry ring
    assert d2.pop() == -EINVAL


def test_readable_after_writable_is_rejected():
    d = Driver()
    d.desc(0, 0x10000, 8, F_NEXT | F_WRITE, 1)
    d.desc(1, 0x20000, 8, 0)
    d.publish(0)
    assert d.pop() == -EINVAL


def test_total_length_is_capped():
    # 1023 indirect descriptors of 1 MiB each (all over the same RAM) exceed the 64 MiB cap
    d = Driver()
    table = 0x40000
    n = 100
    for i in range(n):
        d.desc(i, 0, RAM, F_WRITE | (F_NEXT if i + 1 < n else 0), i + 1, table=table)
    d.desc(0, table, 16 * n, F_INDIRECT)
    d.publish(0)
    assert d.pop() == -EMSGSIZE


@pytest.mark.parametrize("size,desc,avail,used,err", [
    (0, DESC, AVAIL, USED, EINVAL),
    (3, DESC, AVAIL, USED, EINVAL),          # not a power of two
    (2048, DESC, AVAIL, USED, EINVAL),       # above the maximum
    (8, DESC + 8, AVAIL, USED, EINVAL),      # misaligned descriptor table
    (8, DESC, AVAIL, RAM - 8, EFAULT),       # used ring runs off the end of RAM
    (8, 0xFFFFFFFFFFFFFFF0, AVAIL, USED, EFAULT),
])
def test_ring_layout_checked_at_setup(size, desc, avail, used, err):
    mem = GuestMemory()
    mem.add(0, RAM)
    e = ffi.new("int *")
    assert lib.kvmvm_virtq_new(mem._gm, size, desc, avail, used, e) == ffi.NULL
    assert e[0] == -err
