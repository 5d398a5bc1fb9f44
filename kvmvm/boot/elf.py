"""ELF kernels: parse and check an x86-64 ELF (with or without a PVH entry note), load it.

Header, table and note bounds are checked by hand, so each malformed image gets one exact
error (the unit tests cross-check the result against pyelftools).
"""

from __future__ import annotations

import struct
from kvmvm.record import record

from kvmvm.boot.layout import HIMEM, RamLayout
from kvmvm.errors import ImageError

ELF_MAGIC = b"\x7fELF"
EM_X86_64 = 62
ET_EXEC = 2
PT_LOAD = 1
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18


@record
class Segment:
    index: int
    paddr: int
    data: memoryview    # a view into the image: no copy until it is written to guest memory
    memsz: int
    offset: int = 0     # of data in the image file


@record
class ElfKernel:
    path: str
    entry: int                 # e_entry: the 64-bit entry point (physical for kvmvm and Linux)
    pvh_entry: int | None      # XEN_ELFNOTE_PHYS32_ENTRY, if present
    segments: list[Segment]
    note_names: frozenset = frozenset()   # owners of its ELF notes ("Linux" marks a Linux kernel)

    initrd_max = 1 << 32        # (same interface as bzimage.BzImage)

    @property
    def is_linux(self) -> bool:
        return "Linux" in self.note_names

    @property
    def entry64(self) -> int:
        return self.entry

    @property
    def start(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def end(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)

    def covers(self, addr: int) -> bool:
        return any(s.paddr <= addr < s.paddr + s.memsz for s in self.segments)


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def parse(data, path: str = "kernel") -> ElfKernel:
    """Parse and check an ELF kernel image (bytes or an mmap); raise ImageError naming the
    first problem."""
    def bad(msg: str) -> ImageError:
        return ImageError(f"{path}: {msg}")

    if len(data) < 64 or not is_elf(data):
        raise bad("not an ELF image")
    if data[4] != 2:
        raise bad(f"ELF class {data[4]} is not supported (need ELFCLASS64)")
    if data[5] != 1:
        raise bad(f"ELF data encoding {data[5]} is not supported (need little-endian)")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_machine != EM_X86_64:
        raise bad(f"ELF machine {e_machine} is not x86-64")
    if e_type != ET_EXEC:
        raise bad(f"ELF type {e_type} is not supported (need a static executable, ET_EXEC)")
    e_entry, e_phoff = struct.unpack_from("<QQ", data, 24)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    if e_phnum == 0:
        raise bad("ELF has no program headers")
    if e_phentsize != 56:
        raise bad(f"ELF program header size {e_phentsize} is not 56")
    if e_phoff + e_phnum * e_phentsize > len(data):
        raise bad("program headers lie past the end of the file (truncated image?)")

    view = memoryview(data)
    loads: list[Segment] = []
    notes: list[tuple[int, int]] = []
    for i in range(e_phnum):
        p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type not in (PT_LOAD, PT_NOTE):
            continue
        if p_offset + p_filesz > len(data):
            raise bad(f"segment {i}: its data lies past the end of the file (truncated image?)")
        if p_type == PT_NOTE:
            notes.append((p_offset, p_filesz))
            continue
        if p_filesz > p_memsz:
            raise bad(f"segment {i}: file size {p_filesz:#x} exceeds memory size {p_memsz:#x}")
        if p_paddr + p_memsz > 1 << 52:
            raise bad(f"segment {i}: address {p_paddr:#x}+{p_memsz:#x} is out of range")
        if p_memsz:
            loads.append(Segment(i, p_paddr, view[p_offset:p_offset + p_filesz], p_memsz, p_offset))
    if not loads:
        raise bad("ELF has no loadable segments")

    pvh, names = _read_notes(data, notes, bad)
    return ElfKernel(path, e_entry, pvh, loads, frozenset(names))


def _read_notes(data: bytes, notes, bad) -> tuple[int | None, set]:
    """XEN_ELFNOTE_PHYS32_ENTRY (if any) and the note owners.

    Notes are read by hand: the format is three words, a padded name and a padded
    descriptor, and importing pyelftools would double `kvmvm boot`'s start-up time.
    tests/unit/test_elf_loader.py checks this reader against pyelftools.
    """
    names: set = set()
    pvh = None
    for off, size in notes:
        pos, end = off, off + size
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            name_at = pos + 12
            desc_at = name_at + ((namesz + 3) & ~3)
            nxt = desc_at + ((descsz + 3) & ~3)
            if nxt > end:
                raise bad("malformed ELF note: it runs past the end of its segment")
            name = data[name_at:name_at + namesz].rstrip(b"\0").decode("latin-1")
            names.add(name)
            if name == "Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                if descsz not in (4, 8):
                    raise bad(f"PVH entry note has {descsz} bytes (need 4 or 8)")
                pvh = int.from_bytes(data[desc_at:desc_at + descsz], "little") & 0xFFFFFFFF
            pos = nxt
    return pvh, names


def check_fits(k: ElfKernel, ram: RamLayout) -> None:
    """Every segment inside guest RAM and above the boot area; entry points inside the image."""
    for s in k.segments:
        if s.paddr < HIMEM:
            raise ImageError(f"{k.path}: segment {s.index} at {s.paddr:#x} lies below 1 MiB "
                             "(kvmvm keeps that area for boot data)")
        if not ram.contains(s.paddr, s.memsz):
            raise ImageError(f"{k.path}: segment {s.index} ({s.paddr:#x}-{s.paddr + s.memsz:#x}) "
                             f"does not fit in guest memory ({ram.size >> 20} MiB)")
    if k.pvh_entry is not None and not k.covers(k.pvh_entry):
        raise ImageError(f"{k.path}: PVH entry point {k.pvh_entry:#x} lies outside the loaded image")
    if k.pvh_entry is None and not k.covers(k.entry):
        raise ImageError(f"{k.path}: entry point {k.entry:#x} lies outside the loaded image")


def load(k: ElfKernel, write) -> None:
    """Copy the segments into guest memory with write(gpa, bytes) (RAM starts zeroed)."""
    for s in k.segments:
        if s.data:
            write(s.paddr, s.data)
