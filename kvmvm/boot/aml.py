"""Just enough AML (ACPI Machine Language) to describe kvmvm's devices in a DSDT."""

from __future__ import annotations

import struct


def pkg_length(body_len: int) -> bytes:
    """PkgLength encoding of a package whose body (after the PkgLength) has body_len bytes."""
    for extra in range(4):
        total = body_len + 1 + extra
        if extra == 0 and total < 0x40:
            return bytes([total])
        if extra and total < 1 << (4 + 8 * extra):
            out = [(extra << 6) | (total & 0xF)]
            for i in range(extra):
                out.append((total >> (4 + 8 * i)) & 0xFF)
            return bytes(out)
    raise ValueError("AML package too long")


def name_seg(name: str) -> bytes:
    if not 1 <= len(name) <= 4 or not name.replace("_", "A").isalnum():
        raise ValueError(f"bad AML name {name!r}")
    return name.upper().ljust(4, "_").encode()


def name_string(path: str) -> bytes:
    prefix = b""
    if path.startswith("\\"):
        prefix, path = b"\\", path[1:]
    segs = [name_seg(s) for s in path.split(".")] if path else []
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + b"\x2e" + b"".join(segs)          # DualNamePrefix
    return prefix + b"\x2f" + bytes([len(segs)]) + b"".join(segs)   # MultiNamePrefix


def integer(v: int) -> bytes:
    if v == 0:
        return b"\x00"
    if v == 1:
        return b"\x01"
    if v < 1 << 8:
        return b"\x0a" + struct.pack("<B", v)
    if v < 1 << 16:
        return b"\x0b" + struct.pack("<H", v)
    if v < 1 << 32:
        return b"\x0c" + struct.pack("<I", v)
    return b"\x0e" + struct.pack("<Q", v)


def string(s: str) -> bytes:
    return b"\x0d" + s.encode("ascii") + b"\x00"


def name(n: str, value: bytes) -> bytes:
    return b"\x08" + name_string(n) + value


def package(*elements: bytes) -> bytes:
    body = bytes([len(elements)]) + b"".join(elements)
    return b"\x12" + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return b"\x11" + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return b"\x10" + pkg_length(len(body)) + body


def device(n: str, *terms: bytes) -> bytes:
    body = name_string(n) + b"".join(terms)
    return b"\x5b\x82" + pkg_length(len(body)) + body


def method(n: str, nargs: int, *terms: bytes) -> bytes:
    body = name_string(n) + bytes([nargs & 7]) + b"".join(terms)
    return b"\x14" + pkg_length(len(body)) + body


def notify(path: str, value: int) -> bytes:
    return b"\x86" + name_string(path) + integer(value)


# --- resource descriptors (for _CRS buffers) ---
def memory32_fixed(base: int, size: int, writable: bool = True) -> bytes:
    return struct.pack("<BHBII", 0x86, 9, 1 if writable else 0, base, size)


def io_port(base: int, size: int) -> bytes:
    # I/O Port Descriptor: 16-bit decode, min = max = base, alignment 1
    return struct.pack("<BBHHBB", 0x47, 1, base, base, 1, size)


def eisa_id(code: str) -> bytes:
    """EisaId("PNP0501") as its DWord integer."""
    v = ((ord(code[0]) - 0x40) << 10) | ((ord(code[1]) - 0x40) << 5) | (ord(code[2]) - 0x40)
    raw = bytes([v >> 8, v & 0xFF]) + bytes.fromhex(code[3:7])
    return integer(int.from_bytes(raw, "little"))


def irq_no_flags(irq: int) -> bytes:
    return struct.pack("<BH", 0x22, 1 << irq)


def interrupt(irq: int, edge: bool = True, active_low: bool = False, shared: bool = False) -> bytes:
    flags = 0x01 | (0x02 if edge else 0) | (0x04 if active_low else 0) | (0x08 if shared else 0)
    return struct.pack("<BHBBI", 0x89, 6, flags, 1, irq)


def resource_template(*descs: bytes) -> bytes:
    return buffer(b"".join(descs) + b"\x79\x00")   # End Tag, checksum 0 = "ok"
