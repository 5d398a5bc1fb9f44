"""bzImage kernels through the Linux 64-bit boot protocol.

The setup header is checked (boot flag, "HdrS", protocol >= 2.12, XLF_KERNEL_64, sizes);
the protected-mode part is loaded at its preferred address and entered at +0x200 in long
mode with boot_params (a copy of the setup header) in rsi.
"""

from __future__ import annotations

import struct
from kvmvm.record import record

from kvmvm.boot.layout import HIMEM, RamLayout
from kvmvm.errors import ImageError

SETUP_HEADER_START = 0x1F1
MIN_PROTOCOL = 0x020C       # 2.12: xloadflags, 64-bit entry, cmdline above 4G
XLF_KERNEL_64 = 1 << 0
LOADED_HIGH = 1 << 0


@record
class BzImage:
    path: str
    protocol: int
    setup_header: bytes      # bytes 0x1f1 .. end of the header (copied into boot_params)
    kernel: memoryview       # the protected-mode part (a view into the image)
    load_addr: int
    init_size: int
    cmdline_size: int
    initrd_max: int = 0x37FFFFFF

    pvh_entry = None            # a bzImage is always entered at its 64-bit entry
    is_linux = True

    @property
    def entry64(self) -> int:
        return self.load_addr + 0x200

    @property
    def end(self) -> int:
        return self.load_addr + max(self.init_size, len(self.kernel))


def is_bzimage(data: bytes) -> bool:
    return len(data) >= 0x206 and data[0x202:0x206] == b"HdrS"


def parse(data: bytes, path: str = "kernel") -> BzImage:
    def bad(msg):
        return ImageError(f"{path}: {msg}")

    if len(data) < 0x264:
        raise bad("too short for a bzImage setup header (truncated image?)")
    if data[0x202:0x206] != b"HdrS":
        raise bad('not a bzImage (no "HdrS" setup header signature)')
    if struct.unpack_from("<H", data, 0x1FE)[0] != 0xAA55:
        raise bad("bzImage boot flag is not 0xAA55")
    protocol = struct.unpack_from("<H", data, 0x206)[0]
    if protocol < MIN_PROTOCOL:
        raise bad(f"boot protocol {protocol >> 8}.{protocol & 0xFF:02d} is too old (need 2.12 or later)")
    setup_sects = data[0x1F1] or 4
    loadflags = data[0x211]
    if not loadflags & LOADED_HIGH:
        raise bad("bzImage is not a high-loaded (bzImage) kernel (zImage is not supported)")
    xloadflags = struct.unpack_from("<H", data, 0x236)[0]
    if not xloadflags & XLF_KERNEL_64:
        raise bad("kernel has no 64-bit entry point (XLF_KERNEL_64 is not set)")
    setup_size = (setup_sects + 1) * 512
    syssize = struct.unpack_from("<I", data, 0x1F4)[0] * 16
    if setup_size >= len(data):
        raise bad(f"setup code ({setup_size} bytes) runs past the end of the file (truncated image?)")
    if setup_size + syssize > len(data):
        raise bad(f"kernel ({syssize} bytes after the setup code) runs past the end of the file "
                  "(truncated image?)")
    header_end = 0x202 + data[0x201]          # jump at 0x200 skips the header; its target ends it
    header_end = max(min(header_end, 0x280), 0x268)
    cmdline_size = struct.unpack_from("<I", data, 0x238)[0] or 255
    init_size = struct.unpack_from("<I", data, 0x260)[0]
    pref = struct.unpack_from("<Q", data, 0x258)[0]
    load = pref if pref >= HIMEM else HIMEM
    initrd_max = struct.unpack_from("<I", data, 0x22C)[0] or 0x37FFFFFF
    return BzImage(path, protocol, data[SETUP_HEADER_START:header_end], memoryview(data)[setup_size:],
                   load, init_size, cmdline_size, initrd_max + 1)


def check_fits(k: BzImage, ram: RamLayout) -> None:
    if not ram.contains(k.load_addr, k.end - k.load_addr):
        raise ImageError(f"{k.path}: kernel needs {(k.end - k.load_addr + (1 << 20) - 1) >> 20} MiB "
                         f"from {k.load_addr:#x} (init_size) but guest memory is {ram.size >> 20} MiB")
