"""Craft small ELF64 images in memory for loader tests (no toolchain needed)."""

from __future__ import annotations

import struct

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    def pad(b):
        return b + b"\0" * (-len(b) % 4)
    return struct.pack("<III", len(name) + 1, len(desc), ntype) + pad(name + b"\0") + pad(desc)


def make_elf(*, entry=0x100000, paddr=0x100000, code=b"\xf4" * 16, memsz=None, pvh=0x100000,
             pvh_desc_len=8, cls=2, data=1, machine=62, etype=2, extra_notes=b"") -> bytes:
    """ELF64 with one PT_LOAD (code at paddr) and, when pvh is not None, a PT_NOTE with the
    PVH entry (followed by extra_notes)."""
    phnum = 2 if pvh is not None else 1
    phoff = 64
    off = phoff + phnum * 56
    notes = note(b"Xen", 18, pvh.to_bytes(pvh_desc_len, "little")) + extra_notes if pvh is not None else b""
    code_off = off + len(notes)
    ident = b"\x7fELF" + bytes([cls, data, 1, 0]) + b"\0" * 8
    ehdr = EHDR.pack(ident, etype, machine, 1, entry, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    ph = PHDR.pack(1, 5, code_off, paddr, paddr, len(code), memsz or len(code), 0x1000)
    if pvh is not None:
        ph += PHDR.pack(4, 4, off, 0, 0, len(notes), len(notes), 4)
    return ehdr + ph + notes + code
