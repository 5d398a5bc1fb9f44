#!/usr/bin/env python3
"""Reference runner for the tiny guests' 64-bit entry (e_entry), straight on /dev/kvm.

This is not kvmvm: it is a ~200-line, dependency-free check that the guests'
64-bit entry ABI works, and a worked example of what a loader must provide:
long mode, identity page tables over the first 4 GiB, a flat 64-bit GDT, and
%rsi = boot_params ("zero page") with cmd_line_ptr and an e820 table.

Devices: COM1 (THR output, LSR always ready), debug-exit at 0xf4 (status
(v << 1) | 1), i8042 reset (0xfe to 0x64: status 0); unmapped MMIO reads as 0;
other ports are ignored and read as 0. A triple fault (shutdown) is status 1.

usage: kvm64run.py [--mem MIB] [--timeout S] IMAGE.elf [CMDLINE]
"""
import argparse
import ctypes
import fcntl
import mmap
import os
import struct
import sys
import time

KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_GET_SUPPORTED_CPUID = 0xC008AE05
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_RUN = 0xAE80
KVM_GET_REGS = 0x8090AE81
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83
KVM_SET_SREGS = 0x4138AE84
KVM_SET_CPUID2 = 0x4008AE90

EXIT_IO, EXIT_HLT, EXIT_MMIO, EXIT_SHUTDOWN = 2, 5, 6, 8
EXIT_FAIL_ENTRY, EXIT_INTERNAL_ERROR = 9, 17

# Guest physical layout used by this runner.
GDT_ADDR = 0x500
BOOT_PARAMS = 0x7000
PML4 = 0x9000          # PML4, PDPT, then 4 page directories (2 MiB pages)
CMDLINE = 0x20000
LOAD_MIN = 0x100000


class Segment(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint32),
                ("selector", ctypes.c_uint16), ("type", ctypes.c_uint8),
                ("present", ctypes.c_uint8), ("dpl", ctypes.c_uint8),
                ("db", ctypes.c_uint8), ("s", ctypes.c_uint8), ("l", ctypes.c_uint8),
                ("g", ctypes.c_uint8), ("avl", ctypes.c_uint8),
                ("unusable", ctypes.c_uint8), ("padding", ctypes.c_uint8)]


class DTable(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint16),
                ("padding", ctypes.c_uint16 * 3)]


class Sregs(ctypes.Structure):
    _fields_ = [(n, Segment) for n in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")] + \
               [("gdt", DTable), ("idt", DTable)] + \
               [(n, ctypes.c_uint64) for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer",
                                                "apic_base")] + \
               [("interrupt_bitmap", ctypes.c_uint64 * 4)]


class Regs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10",
        "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


def load_elf(mem, path):
    """Copy PT_LOAD segments (vaddr == paddr) into mem, zero-fill bss; return e_entry."""
    data = open(path, "rb").read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise SystemExit(f"{path}: not an ELF64 file")
    entry, phoff = struct.unpack_from("<QQ", data, 24)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    for i in range(phnum):
        p_type, _flags, off, _vaddr, paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type != 1:
            continue
        if paddr < LOAD_MIN or paddr + memsz > len(mem):
            raise SystemExit(f"{path}: segment {paddr:#x}+{memsz:#x} outside RAM")
        mem[paddr:paddr + filesz] = data[off:off + filesz]
        mem[paddr + filesz:paddr + memsz] = bytes(memsz - filesz)
    return entry


def setup_boot(mem, mem_size, cmdline):
    # GDT: null, 0x08 64-bit code, 0x10 data.
    struct.pack_into("<QQQ", mem, GDT_ADDR, 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF)
    # Identity map of 0..4 GiB with 2 MiB pages.
    pdpt, pd = PML4 + 0x1000, PML4 + 0x2000
    struct.pack_into("<Q", mem, PML4, pdpt | 3)
    for i in range(4):
        struct.pack_into("<Q", mem, pdpt + 8 * i, (pd + 0x1000 * i) | 3)
    for i in range(2048):
        struct.pack_into("<Q", mem, pd + 8 * i, (i << 21) | 0x83)
    # boot_params: cmdline + e820.
    raw = cmdline.encode() + b"\0"
    mem[CMDLINE:CMDLINE + len(raw)] = raw
    struct.pack_into("<I", mem, BOOT_PARAMS + 0x228, CMDLINE)
    struct.pack_into("<I", mem, BOOT_PARAMS + 0x238, len(raw) - 1)   # cmdline_size
    e820 = [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2),
            (0x100000, mem_size - 0x100000, 1)]
    mem[BOOT_PARAMS + 0x1E8] = len(e820)
    for i, (addr, size, typ) in enumerate(e820):
        struct.pack_into("<QQI", mem, BOOT_PARAMS + 0x2D0 + 20 * i, addr, size, typ)


def seg(selector, code):
    s = Segment(base=0, limit=0xFFFFFFFF, selector=selector, present=1, dpl=0, s=1, g=1)
    if code:
        s.type, s.l, s.db = 11, 1, 0
    else:
        s.type, s.l, s.db = 3, 0, 1
    return s


def set_cpuid(kvm, vcpu):
    nent = 100
    buf = bytearray(struct.pack("<II", nent, 0) + bytes(40 * nent))
    fcntl.ioctl(kvm, KVM_GET_SUPPORTED_CPUID, buf)
    fcntl.ioctl(vcpu, KVM_SET_CPUID2, buf)


def run(image, cmdline="", mem_mib=128, timeout=30.0, out=sys.stdout.buffer):
    """Boot image through its 64-bit entry; return the exit status."""
    mem_size = mem_mib << 20
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    mem = mmap.mmap(-1, mem_size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION,
                struct.pack("<IIQQQ", 0, 0, 0, mem_size, addr))
    entry = load_elf(mem, image)
    setup_boot(mem, mem_size, cmdline)

    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    set_cpuid(kvm, vcpu)
    run_size = fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
    krun = mmap.mmap(vcpu, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    sregs = Sregs()
    fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs)
    sregs.cs = seg(0x08, True)
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg(0x10, False)
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, 23
    sregs.cr3 = PML4
    sregs.cr4 = 0x20                         # PAE
    sregs.cr0 = 0x80000033                   # PG | NE | ET | MP | PE
    sregs.efer = 0x500                       # LME | LMA
    fcntl.ioctl(vcpu, KVM_SET_SREGS, sregs)
    regs = Regs(rip=entry, rsi=BOOT_PARAMS, rflags=2)
    fcntl.ioctl(vcpu, KVM_SET_REGS, regs)

    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            fcntl.ioctl(vcpu, KVM_RUN, 0)
            reason = struct.unpack_from("<I", krun, 8)[0]
            if reason == EXIT_IO:
                direction, size, port, count, off = struct.unpack_from("<BBHIQ", krun, 32)
                if direction == 1:           # out
                    val = krun[off]
                    if port == 0x3F8:
                        out.write(bytes([val]))
                        out.flush()
                    elif port == 0xF4:
                        return (val << 1) | 1
                    elif port == 0x64 and val == 0xFE:
                        return 0
                else:
                    krun[off:off + size * count] = bytes(size * count)
                    if port == 0x3FD:
                        krun[off] = 0x60     # THRE | TEMT
            elif reason == EXIT_MMIO:
                _phys, _data, length, is_write = struct.unpack_from("<Q8sIB", krun, 32)
                if not is_write:
                    krun[40:48] = bytes(8)
            elif reason == EXIT_SHUTDOWN:
                return 1
            elif reason == EXIT_HLT:
                return 2
            else:
                extra = ""
                if reason == EXIT_INTERNAL_ERROR:
                    extra = " suberror %d" % struct.unpack_from("<I", krun, 32)
                fcntl.ioctl(vcpu, KVM_GET_REGS, regs)
                raise SystemExit(f"kvm exit {reason}{extra} at rip {regs.rip:#x}")
        raise SystemExit("timeout")
    finally:
        os.close(kvm)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mem", type=int, default=128, help="guest RAM in MiB")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("image")
    ap.add_argument("cmdline", nargs="?", default="")
    a = ap.parse_args()
    sys.exit(run(a.image, a.cmdline, a.mem, a.timeout))


if __name__ == "__main__":
    main()
