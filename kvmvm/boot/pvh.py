"""The PVH boot ABI: hvm_start_info (+ memory map and initrd module) for a 32-bit entry."""

from __future__ import annotations

import struct

from kvmvm.boot.layout import PVH_START_INFO

START_INFO_MAGIC = 0x336EC578
START_INFO_SIZE = 56
MEMMAP_ENTRY = struct.Struct("<QQII")
MODULE_ENTRY = struct.Struct("<QQQQ")


def start_info(cmdline_gpa: int, e820: list[tuple[int, int, int]], rsdp_gpa: int = 0,
               initrd: tuple[int, int] | None = None, base: int = PVH_START_INFO) -> bytes:
    """hvm_start_info (version 1) at `base`, its memmap and module list right after it."""
    memmap_gpa = base + START_INFO_SIZE
    memmap = b"".join(MEMMAP_ENTRY.pack(a, s, t, 0) for a, s, t in e820)
    mod_gpa = memmap_gpa + len(memmap)
    mods = MODULE_ENTRY.pack(initrd[0], initrd[1], 0, 0) if initrd else b""
    head = struct.pack("<IIIIQQQQII", START_INFO_MAGIC, 1, 0, 1 if initrd else 0,
                       mod_gpa if initrd else 0, cmdline_gpa, rsdp_gpa, memmap_gpa, len(e820), 0)
    assert len(head) == START_INFO_SIZE
    return head + memmap + mods
