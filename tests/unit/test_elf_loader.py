"""ELF/PVH loader: a good image parses; each malformed one gets its own exact error."""

import struct

import pytest

from kvmvm.boot import elf
from kvmvm.boot.layout import MiB, RamLayout
from kvmvm.errors import ConfigError, ImageError

from .elfgen import make_elf

RAM = RamLayout(128 * MiB)


def parse(data):
    k = elf.parse(data, "img")
    elf.check_fits(k, RAM)
    return k


def test_good_image_with_pvh_note():
    k = parse(make_elf(pvh=0x100004))
    assert k.pvh_entry == 0x100004
    assert k.entry == 0x100000
    assert (k.start, k.end) == (0x100000, 0x100010)


def test_four_byte_pvh_note():
    assert parse(make_elf(pvh=0x100008, pvh_desc_len=4)).pvh_entry == 0x100008


def test_image_without_note_uses_64bit_entry():
    k = parse(make_elf(pvh=None))
    assert k.pvh_entry is None and k.entry == 0x100000


def test_bss_counts_in_memsz():
    assert parse(make_elf(memsz=0x3000)).end == 0x103000


def flip(data: bytes, off: int, value: int) -> bytes:
    b = bytearray(data)
    b[off] = value
    return bytes(b)


GOOD = make_elf()


@pytest.mark.parametrize("data,msg", [
    (flip(GOOD, 0, 0x7e), "img: not an ELF image"),
    (flip(GOOD, 4, 1), "img: ELF class 1 is not supported (need ELFCLASS64)"),
    (flip(GOOD, 5, 2), "img: ELF data encoding 2 is not supported (need little-endian)"),
    (flip(GOOD, 18, 40), "img: ELF machine 40 is not x86-64"),
    (flip(GOOD, 16, 3), "img: ELF type 3 is not supported (need a static executable, ET_EXEC)"),
    (flip(GOOD, 56, 0), "img: ELF has no program headers"),
    (flip(GOOD, 54, 32), "img: ELF program header size 32 is not 56"),
    (flip(GOOD, 33, 0x10), "img: program headers lie past the end of the file (truncated image?)"),
    (GOOD[:-4], "img: segment 0: its data lies past the end of the file (truncated image?)"),
    (GOOD[:100], "img: program headers lie past the end of the file (truncated image?)"),
    (GOOD[:40], "img: not an ELF image"),
    (flip(GOOD, 64, 6), "img: ELF has no loadable segments"),
])
def test_malformed_header_errors(data, msg):
    with pytest.raises(ImageError) as e:
        parse(data)
    assert str(e.value) == msg


def test_filesz_bigger_than_memsz():
    with pytest.raises(ImageError, match=r"^img: segment 0: file size 0x10 exceeds memory size 0x8$"):
        parse(make_elf(memsz=8))


def test_segment_below_1mib():
    with pytest.raises(ImageError, match=r"^img: segment 0 at 0x8000 lies below 1 MiB"):
        parse(make_elf(paddr=0x8000, entry=0x8000, pvh=0x8000))


def test_segment_outside_memory():
    with pytest.raises(ImageError, match=r"^img: segment 0 \(0x8000000-0x8000010\) does not fit in guest memory \(128 MiB\)$"):
        parse(make_elf(paddr=128 * MiB, entry=128 * MiB, pvh=128 * MiB))


def test_pvh_note_pointing_outside_image():
    with pytest.raises(ImageError, match=r"^img: PVH entry point 0x9000000 lies outside the loaded image$"):
        parse(make_elf(pvh=0x9000000))


def test_entry_outside_image_without_note():
    with pytest.raises(ImageError, match=r"^img: entry point 0x200000 lies outside the loaded image$"):
        parse(make_elf(pvh=None, entry=0x200000))


def test_bad_pvh_note_size():
    with pytest.raises(ImageError, match=r"^img: PVH entry note has 2 bytes \(need 4 or 8\)$"):
        parse(make_elf(pvh=0x1000, pvh_desc_len=2))


def test_truncated_note():
    data = bytearray(make_elf())
    # claim the note segment is longer than the file
    struct.pack_into("<Q", data, 64 + 56 + 32, 0x10000)
    with pytest.raises(ImageError, match=r"^img: segment 1: its data lies past the end of the file"):
        parse(bytes(data))


def test_image_errors_are_config_errors():
    # the CLI maps ConfigError to exit status 2
    assert issubclass(ImageError, ConfigError) and issubclass(ImageError, ValueError)


def pyelftools_view(data: bytes):
    """What pyelftools reads from an image: PVH entry and note owners."""
    import io

    from elftools.elf.elffile import ELFFile

    pvh, names = None, set()
    for seg in ELFFile(io.BytesIO(data)).iter_segments():
        if seg["p_type"] != "PT_NOTE":
            continue
        for n in seg.iter_notes():
            names.add(n["n_name"])
            if n["n_name"] == "Xen" and n["n_type"] == 18:
                desc = n["n_desc"]
                raw = desc if isinstance(desc, bytes) else desc.encode("latin-1")
                pvh = int.from_bytes(raw, "little") & 0xFFFFFFFF
    return pvh, names


@pytest.mark.parametrize("img", [make_elf(pvh=0x100004), make_elf(pvh=0x100008, pvh_desc_len=4),
                                 make_elf(pvh=None)])
def test_note_reader_agrees_with_pyelftools(img):
    k = elf.parse(img, "img")
    assert (k.pvh_entry, set(k.note_names)) == pyelftools_view(img)


def test_note_reader_agrees_with_pyelftools_on_real_images():
    """The tiny guests and (when built) kvmvm's Linux vmlinux."""
    import glob
    import os

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    paths = glob.glob(os.path.join(root, "guest-images", "tiny", "out", "*.elf"))
    from kvmvm.image import cached_default

    assert paths, "no tiny guests built (make -C guest-images/tiny)"
    vmlinux = cached_default().vmlinux   # present once the guest kernel was built
    if vmlinux:
        paths.append(str(vmlinux))
    for p in paths:
        data = open(p, "rb").read()
        k = elf.parse(data, p)
        assert (k.pvh_entry, set(k.note_names)) == pyelftools_view(data), p
