"""virtio-blk `direct` drives (O_DIRECT on the host file), driven by the virtio-blk tiny guest.

The guest reads sector 0, writes sector 1 and reads it back. What is checked: the data on
disk, that the file's pages never entered the host page cache (mincore after the page cache
was emptied for the file: a cached drive fills it, so the check can fail), the O_DIRECT
flag on the descriptor, the guest's unaligned buffers (bounce path), and the refusal on a
file system without O_DIRECT.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.integration.conftest import KVMVM, ROOT, TINY_OUT, kvmvm

pytestmark = pytest.mark.host

BLK = str(TINY_OUT / "virtio-blk.elf")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


@pytest.fixture
def disk_dir():
    """A folder on a disk-backed file system (/var/tmp; tmpfs pages are always 'cached')."""
    d = tempfile.mkdtemp(prefix="kvmvm-direct-", dir="/var/tmp")
    try:
        fstype = subprocess.run(["stat", "-f", "-c", "%T", d], capture_output=True,
                                text=True, check=True).stdout.strip()
        assert fstype not in ("tmpfs", "ramfs"), f"/var/tmp is {fstype}: these tests need a disk"
        yield Path(d)
    finally:
        shutil.rmtree(d)


def make_image(path: Path, size: int = 1 << 20) -> Path:
    """An image with a tag in sector 0, written to disk and dropped from the page cache."""
    path.write_bytes(b"KVMVM-DIRECT-0".ljust(16, b".") + bytes(size - 16))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert cached_pages(path) == 0, "the page cache kept the new image: cannot test"
    return path


def cached_pages(path: Path) -> int:
    """How many of the file's pages are in the host page cache (mincore)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        try:
            assert _libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            _libc.munmap(addr, size)
        return sum(v & 1 for v in vec)
    finally:
        os.close(fd)


# (drive options, guest arguments, bytes written from sector 1): aligned single-segment
# write (straight O_DIRECT), 341/341/342-byte segments (bounce), buffers 3 bytes past a page
# boundary (bounce), 300 KiB through unaligned buffers (more than one bounce-buffer piece)
CASES = {
    "aligned": (",direct", "segs=1", 1024),
    "odd-segments": (",direct", "segs=3", 1024),
    "unaligned-buffers": (",direct", "segs=2 skew=3", 1024),
    "unaligned-300k": (",direct", "segs=5 skew=3 len=307200", 307200),
    "cached": ("", "segs=1", 1024),       # the control: without direct the page cache fills
}


@pytest.mark.parametrize("case", CASES)
def test_direct_drive_reads_and_writes_around_the_page_cache(tiny_images, kvm_ok, disk_dir, case):
    opts, args, n = CASES[case]
    img = make_image(disk_dir / "d.img")
    r = kvmvm("boot", "--kernel", BLK, "--drive", f"{img}{opts},id=direct0", "--cmdline",
              f"word=odirect {args}", "--timeout", "30")
    assert r.status == 0, r.out + r.err
    assert "blk0: capacity 2048 id 'direct0' ro=0" in r.out
    assert "blk0: sector0 'KVMVM-DIRECT-0..'" in r.out
    assert "blk0: write+flush+read ok" in r.out
    pages = cached_pages(img)
    if opts:
        assert pages == 0, f"{pages} page(s) of a direct drive went through the page cache"
    else:
        assert pages > 0, "a cached drive left nothing in the page cache: the check proves nothing"
    data = img.read_bytes()
    assert data[:16] == b"KVMVM-DIRECT-0.."
    assert data[512:512 + n] == (b"odirect" * (n // 7 + 1))[:n]
    assert data[512 + n:] == bytes(len(data) - 512 - n)


def test_direct_read_only_drive_rejects_writes(tiny_images, kvm_ok, disk_dir):
    img = make_image(disk_dir / "ro.img")
    r = kvmvm("boot", "--kernel", BLK, "--drive", f"{img},ro,direct", "--timeout", "30")
    assert r.status == 0, r.out + r.err
    assert "blk0: sector0 'KVMVM-DIRECT-0..'" in r.out
    assert "blk0: write rejected (status 1)" in r.out
    assert cached_pages(img) == 0
    assert img.read_bytes() == b"KVMVM-DIRECT-0..".ljust(1 << 20, b"\0")


def _fd_flags(path: Path) -> list[int]:
    """The open-file flags of this process's descriptors on path."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != str(path):
                continue
            info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        out.append(int(info.split("flags:")[1].split()[0], 8))
    return out


def test_machine_config_direct_drive(tiny_images, kvm_ok, disk_dir):
    from kvmvm.machine import Machine, MachineConfig

    img = make_image(disk_dir / "m.img")
    r_fd, w_fd = os.pipe()
    m = Machine(MachineConfig(kernel=BLK, cmdline="word=machine", serial_out_fd=w_fd,
                              drives=[f"{img},direct"]))
    try:
        m.build()
        flags = _fd_flags(img)
        # the O_DIRECT descriptor, and the buffered one for what O_DIRECT cannot address
        assert sorted(bool(f & os.O_DIRECT) for f in flags) == [False, True], [oct(f) for f in flags]
        res = m.run()
    finally:
        m.close()
        os.close(w_fd)
    out = os.read(r_fd, 65536).decode()
    os.close(r_fd)
    assert res.status == 0, out
    assert "blk0: write+flush+read ok" in out
    assert cached_pages(img) == 0
    assert _fd_flags(img) == [], "the drive's descriptors outlived the machine"


def test_direct_refused_where_the_file_system_has_no_o_direct(tiny_images, tmp_path):
    # ramfs has no direct I/O (tmpfs has had it since Linux 6.6); mounted in a private
    # mount namespace, so nothing is left on the host whatever happens
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    script = ('mount -t ramfs none "$1" && head -c 65536 /dev/zero > "$1/d.img" && '
              'shift && exec "$@"')
    argv = ["unshare", "-m", "sh", "-c", script, "sh", str(mnt), *KVMVM, "boot", "--kernel",
            BLK, "--drive", f"{mnt}/d.img,direct", "--timeout", "30"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert lines == [f"kvmvm: --drive: {mnt}/d.img: its file system does not support direct I/O "
                     "(O_DIRECT); drop ,direct"], p.stderr
    assert "blk0" not in p.stdout
    assert list(mnt.iterdir()) == []


def test_block_benchmark_runs_the_o_direct_pair(tiny_images, kvm_ok, disk_dir):
    # the benchmark's "O_DIRECT on both" row: kvmvm ,direct against QEMU cache=none
    import json
    import sys

    p = subprocess.run([sys.executable, "benchmarks/virtio_blk.py", "--direct", "--runs", "1",
                        "--count", "50", "--dir", str(disk_dir), "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["caching"].startswith("O_DIRECT on both")
    assert ",direct " in r["commands"]["kvmvm"] + " "
    assert "cache=none," in r["commands"]["qemu"]
    for name in ("kvmvm", "qemu"):
        e = r["runtimes"][name]
        assert e.get("failed_runs") == 0 and e["requests_per_s"] > 0, (name, e)
    assert list(disk_dir.iterdir()) == []     # the image went with the run


def test_direct_drive_on_tmpfs_takes_sector_sized_requests(tiny_images, kvm_ok):
    # tmpfs reports no O_DIRECT alignment (statx), so kvmvm assumes 4096 bytes: the guest's
    # 512- and 1024-byte requests go through the buffered descriptor. tmpfs has O_DIRECT
    # since Linux 6.6; before that the drive is refused in one line.
    d = Path(tempfile.mkdtemp(prefix="kvmvm-direct-", dir="/dev/shm"))
    try:
        assert subprocess.run(["stat", "-f", "-c", "%T", d], capture_output=True, text=True,
                              check=True).stdout.strip() == "tmpfs"
        img = d / "t.img"
        img.write_bytes(b"KVMVM-DIRECT-0".ljust(16, b".") + bytes((1 << 20) - 16))
        try:
            os.close(os.open(img, os.O_RDWR | os.O_DIRECT))
            has_direct = True
        except OSError:
            has_direct = False
        r = kvmvm("boot", "--kernel", BLK, "--drive", f"{img},direct", "--cmdline",
                  "word=shm segs=1", "--timeout", "30")
        if not has_direct:
            assert r.status == 2 and "does not support direct I/O" in r.err, r.err
            return
        assert r.status == 0, r.out + r.err
        assert "blk0: sector0 'KVMVM-DIRECT-0..'" in r.out
        assert "blk0: write+flush+read ok" in r.out
        assert img.read_bytes()[512:1536] == (b"shm" * 342)[:1024]
    finally:
        shutil.rmtree(d)
