"""Linux boot_params (the "zero page") for the 64-bit boot protocol.

Used for a vmlinux entered at its 64-bit entry, for bzImage (whose setup header is copied
in first), and for tiny ELF64 guests entered without PVH.
"""

from __future__ import annotations

import struct

E820_MAX = 128
OFF_E820_ENTRIES = 0x1E8
OFF_SETUP_HEADER = 0x1F1
OFF_BOOT_FLAG = 0x1FE
OFF_HEADER = 0x202
OFF_VERSION = 0x206
OFF_TYPE_OF_LOADER = 0x210
OFF_LOADFLAGS = 0x211
OFF_RAMDISK_IMAGE = 0x218
OFF_RAMDISK_SIZE = 0x21C
OFF_CMD_LINE_PTR = 0x228
OFF_CMDLINE_SIZE = 0x238
OFF_EXT_RAMDISK_IMAGE = 0xC0
OFF_EXT_RAMDISK_SIZE = 0xC4
OFF_EXT_CMD_LINE_PTR = 0xC8
OFF_ACPI_RSDP = 0x070
OFF_E820_TABLE = 0x2D0
E820_ENTRY = struct.Struct("<QQI")


def build(cmdline_gpa: int, cmdline_len: int, e820: list[tuple[int, int, int]],
          setup_header: bytes | None = None, initrd: tuple[int, int] | None = None,
          rsdp_gpa: int = 0) -> bytes:
    """A 4 KiB boot_params. setup_header: bytes from a bzImage starting at offset 0x1f1."""
    if len(e820) > E820_MAX:
        raise ValueError("too many e820 entries")
    bp = bytearray(4096)
    if setup_header:
        bp[OFF_SETUP_HEADER:OFF_SETUP_HEADER + len(setup_header)] = setup_header
    else:
        struct.pack_into("<H", bp, OFF_BOOT_FLAG, 0xAA55)
        bp[OFF_HEADER:OFF_HEADER + 4] = b"HdrS"
        struct.pack_into("<H", bp, OFF_VERSION, 0x020F)
    bp[OFF_TYPE_OF_LOADER] = 0xFF                    # "undefined" loader
    bp[OFF_LOADFLAGS] |= 0x01                        # LOADED_HIGH
    struct.pack_into("<I", bp, OFF_CMD_LINE_PTR, cmdline_gpa & 0xFFFFFFFF)
    struct.pack_into("<I", bp, OFF_EXT_CMD_LINE_PTR, cmdline_gpa >> 32)
    struct.pack_into("<I", bp, OFF_CMDLINE_SIZE, cmdline_len)
    if initrd:
        struct.pack_into("<I", bp, OFF_RAMDISK_IMAGE, initrd[0] & 0xFFFFFFFF)
        struct.pack_into("<I", bp, OFF_RAMDISK_SIZE, initrd[1] & 0xFFFFFFFF)
        struct.pack_into("<I", bp, OFF_EXT_RAMDISK_IMAGE, initrd[0] >> 32)
        struct.pack_into("<I", bp, OFF_EXT_RAMDISK_SIZE, initrd[1] >> 32)
    if rsdp_gpa:
        struct.pack_into("<Q", bp, OFF_ACPI_RSDP, rsdp_gpa)
    bp[OFF_E820_ENTRIES] = len(e820)
    for i, (a, s, t) in enumerate(e820):
        E820_ENTRY.pack_into(bp, OFF_E820_TABLE + i * 20, a, s, t)
    return bytes(bp)
