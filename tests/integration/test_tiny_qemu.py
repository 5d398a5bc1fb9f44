"""The tiny guests under QEMU microvm (PVH entry) and through their 64-bit entry.

QEMU boots each ELF through its PVH note on this machine's /dev/kvm, the same
image kvmvm loads, so these tests pin down the guests' behaviour independently
of kvmvm's loader. The 64-bit entry is checked with guest-images/tiny/tools/
kvm64run.py, a minimal raw-KVM reference runner. Missing QEMU or /dev/kvm is a
failure, never a skip.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from benchlib import qemu_firmware  # noqa: E402  (qboot: QEMU 10's default SeaBIOS cannot boot -kernel here)

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "guest-images" / "tiny"
OUT = TINY / "out"
KVM64RUN = TINY / "tools" / "kvm64run.py"
PROGRAMS = ("hello", "exitcode", "triplefault", "pio-loop", "mmio-loop", "probe", "halt",
            "libtest")

QEMU = "qemu-system-x86_64"
# microvm without option ROMs or RTC; plain "-cpu host" aborts on MSR 0x10a on PVM.
QEMU_ARGS = [
    "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off",
    "-enable-kvm", "-cpu", "host,-arch-capabilities",
    "-m", "128", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
    "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
]
RUN_TIMEOUT = 60

HELLO = "Hello from kvmvm tiny guest\n"


@dataclass
class Result:
    status: int
    out: str
    seconds: float


@pytest.fixture(scope="session")
def qemu() -> str:
    path = shutil.which(QEMU)
    assert path, f"{QEMU} not found: install qemu-system-x86 (scripts/apt-packages.txt)"
    assert os.access("/dev/kvm", os.R_OK | os.W_OK), "/dev/kvm is missing or not accessible"
    return path


def run_qemu(qemu: str, image: Path, cmdline: str = "") -> Result:
    args = [qemu, *qemu_firmware(), *QEMU_ARGS, "-kernel", str(image)]
    if cmdline:
        args += ["-append", cmdline]
    t0 = time.monotonic()
    proc = subprocess.run(args, capture_output=True, timeout=RUN_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout.decode(errors="replace"),
                  time.monotonic() - t0)


def run_entry64(image: Path, cmdline: str = "") -> Result:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(KVM64RUN), str(image), cmdline],
                          capture_output=True, timeout=RUN_TIMEOUT)
    assert not proc.stderr, proc.stderr.decode(errors="replace")
    return Result(proc.returncode, proc.stdout.decode(errors="replace"),
                  time.monotonic() - t0)


def probe_lines(out: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


# ---- image format -------------------------------------------------------------

@pytest.mark.parametrize("name", PROGRAMS)
def test_elf_layout(tiny_images: Path, name: str) -> None:
    """Static ELF64 at 1 MiB, vaddr == paddr, with a PVH note holding a 32-bit entry."""
    data = (tiny_images / f"{name}.elf").read_bytes()
    assert data[:5] == b"\x7fELF\x02"
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    assert (e_type, e_machine) == (2, 62)           # ET_EXEC, EM_X86_64
    entry, phoff = struct.unpack_from("<QQ", data, 24)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    loads, pvh_entry = [], None
    for i in range(phnum):
        p_type, _f, off, vaddr, paddr, filesz, memsz, _a = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            loads.append((paddr, memsz))
            assert vaddr == paddr and filesz <= memsz
        elif p_type == 4:
            namesz, descsz, ntype = struct.unpack_from("<III", data, off)
            assert (namesz, ntype) == (4, 18) and data[off + 12:off + 16] == b"Xen\0"
            assert descsz in (4, 8)
            pvh_entry = struct.unpack_from("<Q" if descsz == 8 else "<I", data, off + 16)[0]
    assert 1 <= len(loads) <= 2
    assert min(p for p, _ in loads) == 0x100000
    lo, hi = 0x100000, max(p + m for p, m in loads)
    assert lo <= entry < hi and pvh_entry is not None and lo <= pvh_entry < hi
    assert entry != pvh_entry


def test_no_forbidden_instructions(tiny_images: Path) -> None:
    proc = subprocess.run(["make", "-C", str(TINY), "check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- QEMU microvm, PVH entry ------------------------------------------------------

def test_hello(qemu: str, tiny_images: Path) -> None:
    r = run_qemu(qemu, tiny_images / "hello.elf")
    assert (r.status, r.out) == (0, HELLO)


@pytest.mark.parametrize("arg,status,printed", [
    ("3", 7, 3), ("0", 1, 0), ("0x10", 33, 16), ("", 3, 1), ("garbage", 3, 1),
])
def test_exitcode(qemu: str, tiny_images: Path, arg: str, status: int, printed: int) -> None:
    r = run_qemu(qemu, tiny_images / "exitcode.elf", arg)
    assert (r.status, r.out) == (status, f"exitcode {printed}\n")


def test_triplefault(qemu: str, tiny_images: Path) -> None:
    # QEMU -no-reboot turns the triple fault into a clean exit 0 (kvmvm reports 1).
    r = run_qemu(qemu, tiny_images / "triplefault.elf")
    assert (r.status, r.out) == (0, "triplefault: now\n")


def test_pio_loop(qemu: str, tiny_images: Path) -> None:
    r = run_qemu(qemu, tiny_images / "pio-loop.elf", "1000")
    assert (r.status, r.out) == (0, "pio-loop 1000 done\n")


def test_mmio_loop(qemu: str, tiny_images: Path) -> None:
    r = run_qemu(qemu, tiny_images / "mmio-loop.elf", "1000")
    assert (r.status, r.out) == (0, "mmio-loop 1000 done\n")


def test_libtest(qemu: str, tiny_images: Path) -> None:
    r = run_qemu(qemu, tiny_images / "libtest.elf")
    assert (r.status, r.out) == (0, "libtest: 34 checks ok\n")


def test_probe(qemu: str, tiny_images: Path) -> None:
    r = run_qemu(qemu, tiny_images / "probe.elf", "probe-arg pyport=0x2f0")
    assert r.status == 0, r.out
    lines = r.out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == [
        "mem", "entry", "cmdline", "mmio-unmapped", "pyport-read"]
    info = probe_lines(r.out)
    assert info["entry"] == "pvh"
    assert info["cmdline"] == "probe-arg pyport=0x2f0"
    # 128 MiB minus what QEMU's e820 reserves below 1 MiB.
    assert 126 * 1024 <= int(info["mem"]) <= 128 * 1024
    # QEMU reads unassigned MMIO as 0 and unassigned ports as 0xff.
    assert info["mmio-unmapped"] == "0x0"
    assert info["pyport-read"] == "0xff"


def test_halt_stays_up(qemu: str, tiny_images: Path) -> None:
    proc = subprocess.Popen([qemu, *qemu_firmware(), *QEMU_ARGS, "-kernel", str(tiny_images / "halt.elf")],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline() == b"halt: now\n"
        time.sleep(0.5)
        assert proc.poll() is None, "halt guest exited"
    finally:
        proc.kill()
        proc.wait()


# ---- 64-bit entry (reference raw-KVM runner) -----------------------------------------

@pytest.mark.parametrize("name,cmdline,status,out", [
    ("hello", "", 0, HELLO),
    ("exitcode", "3", 7, "exitcode 3\n"),
    ("triplefault", "", 1, "triplefault: now\n"),
    ("pio-loop", "1000", 0, "pio-loop 1000 done\n"),
    ("libtest", "", 0, "libtest: 34 checks ok\n"),
])
def test_entry64(kvm_ok: None, tiny_images: Path, name: str, cmdline: str, status: int,
                 out: str) -> None:
    r = run_entry64(tiny_images / f"{name}.elf", cmdline)
    assert (r.status, r.out) == (status, out)


def test_entry64_probe(kvm_ok: None, tiny_images: Path) -> None:
    r = run_entry64(tiny_images / "probe.elf", "x=1 pyport=0x2f0")
    assert r.status == 0, r.out
    info = probe_lines(r.out)
    assert info["entry"] == "64"
    assert info["cmdline"] == "x=1 pyport=0x2f0"
    assert int(info["mem"]) == (0x9FC00 + (128 << 20) - 0x100000) // 1024
    assert info["mmio-unmapped"] == "0x0"
    assert info["pyport-read"] == "0x0"     # the reference runner reads ports as 0
