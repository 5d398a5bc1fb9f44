"""kvmvm boots every tiny guest on the local /dev/kvm: output, exit status, exit reasons."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from .conftest import KVMVM, kvmvm

pytestmark = pytest.mark.host

HELLO = "Hello from kvmvm tiny guest\n"


@pytest.mark.parametrize("name,cmdline,status,out", [
    ("hello", "", 0, HELLO),
    ("exitcode", "3", 7, "exitcode 3\n"),
    ("exitcode", "0", 4, "exitcode 0\n"),
    ("exitcode", "1", 6, "exitcode 1\n"),
    ("exitcode", "127", 255, "exitcode 127\n"),
    ("exitcode", "128", 8, "exitcode 128\n"),
    ("exitcode", "255", 8, "exitcode 255\n"),
    ("exitcode", "0x10", 33, "exitcode 16\n"),
    ("pio-loop", "1000", 0, "pio-loop 1000 done\n"),
    ("mmio-loop", "100", 0, "mmio-loop 100 done\n"),
    ("libtest", "", 0, "libtest: 34 checks ok\n"),
])
def test_tiny_guest_status_and_output(kvm_ok, tiny_images: Path, name, cmdline, status, out):
    args = ["boot", "--kernel", str(tiny_images / f"{name}.elf")]
    if cmdline:
        args += ["--cmdline", cmdline]
    r = kvmvm(*args)
    assert r.status == status, r.err
    assert r.out == out
    assert r.err == ""


def test_triplefault_is_a_failure_with_one_line(kvm_ok, tiny_images):
    r = kvmvm("boot", "--kernel", str(tiny_images / "triplefault.elf"))
    assert r.status == 1
    assert r.out == "triplefault: now\n"
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvmvm: guest triple-faulted (KVM_EXIT_SHUTDOWN)")


def test_json_reports_outcome_counts_and_timings(kvm_ok, tiny_images):
    r = kvmvm("boot", "--kernel", str(tiny_images / "pio-loop.elf"), "--cmdline", "500", "--json")
    assert r.status == 0
    out_lines = r.out.strip().splitlines()
    assert out_lines[0] == "pio-loop 500 done"
    res = json.loads(out_lines[-1])
    assert res["outcome"] == "ok" and res["reason"] == "reset" and res["status"] == 0
    st = res["stats"]
    assert st["exits_io"] >= 500 and st["io_unhandled"] >= 500   # port 0x80 has no device
    assert st["exits"] >= st["exits_io"]
    t = res["timings_ms"]
    assert t["process_start"] <= 0 <= t["vm_created"] <= t["first_kvm_run"] <= t["end"] <= t["now"] <= t["closed"]


def test_boot_path_imports_only_what_it_uses(kvm_ok, tiny_images):
    """`kvmvm boot --json` of a tiny guest, in process: its line is valid JSON, and nothing
    heavier than the boot needs was imported on the way (json and re cost more than the
    rest of the start-up's imports; mmap is only for images large enough to map)."""
    import sys

    code = ("import sys; from kvmvm.cli import main\n"
            f"rv = main(['boot', '--kernel', {str(tiny_images / 'hello.elf')!r}, '--json'])\n"
            "print(rv, sorted(m for m in ('json', 're', 'mmap', 'enum', 'dataclasses', 'threading', "
            "'signal', 'click') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 0 and lines[-1] == "0 []", (p.stdout, p.stderr)
    assert json.loads(lines[-2])["outcome"] == "ok" and lines[0] == HELLO.strip()


def test_probe_memory_cmdline_unmapped_mmio(kvm_ok, tiny_images):
    r = kvmvm("boot", "--kernel", str(tiny_images / "probe.elf"), "--memory", "64",
              "--cmdline", "hello world")
    assert r.status == 0, r.err
    lines = r.out.splitlines()
    # 639 KiB below the EBDA + 63 MiB above 1 MiB
    assert lines[0] == f"mem: {639 + 63 * 1024}"
    assert "entry: pvh" in lines
    assert "cmdline: hello world" in lines[2]
    assert "mmio-unmapped: 0x0" in lines


def test_timeout_stops_a_running_guest(kvm_ok, tiny_images):
    r = kvmvm("boot", "--kernel", str(tiny_images / "halt.elf"), "--timeout", "0.5")
    assert r.status == 124
    assert r.out == "halt: now\n"
    assert r.err.strip() == "kvmvm: timed out after 0.5 s; VM stopped"


@pytest.mark.parametrize("cpus", [2, 4])
def test_every_vcpu_starts_and_runs(kvm_ok, tiny_images, cpus):
    """The smp guest starts each AP with INIT + SIPI through its local APIC; each one runs
    real-mode, 32-bit and 64-bit code and reports its APIC ID."""
    r = kvmvm("boot", "--kernel", str(tiny_images / "smp.elf"), "--cpus", str(cpus),
              "--cmdline", str(cpus), "--timeout", "30")
    assert r.status == 0, r.out + r.err
    expected = ["smp: bsp apic 0"] + [f"smp: ap {i} up (apic id {i})" for i in range(1, cpus)] + \
        [f"smp: {cpus} cpus up"]
    assert r.out.splitlines() == expected


def test_a_missing_vcpu_is_noticed(kvm_ok, tiny_images):
    """The same guest on one vCPU: the AP it asks for never answers (the test above can fail)."""
    r = kvmvm("boot", "--kernel", str(tiny_images / "smp.elf"), "--cpus", "1", "--cmdline", "2",
              "--timeout", "60")
    assert r.status == 6, r.out + r.err          # main() returned 1: debug-exit 1
    assert "smp: cpu with apic id 1 did not start (1 up)" in r.out


def without_pvh_note(src: Path, dst: Path) -> Path:
    """Copy an ELF with its PT_NOTE turned into PT_NULL: kvmvm must use the 64-bit entry."""
    data = bytearray(src.read_bytes())
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    for i in range(phnum):
        off = phoff + i * 56
        if struct.unpack_from("<I", data, off)[0] == 4:
            struct.pack_into("<I", data, off, 0)
    dst.write_bytes(data)
    return dst


def test_64bit_entry_without_pvh_note(kvm_ok, tiny_images, tmp_path):
    img = without_pvh_note(tiny_images / "probe.elf", tmp_path / "probe64.elf")
    r = kvmvm("boot", "--kernel", str(img), "--cmdline", "x=1 arg")
    assert r.status == 0, r.err
    assert "entry: 64" in r.out.splitlines()
    assert "cmdline: x=1 arg" in r.out
    img = without_pvh_note(tiny_images / "exitcode.elf", tmp_path / "exitcode64.elf")
    assert kvmvm("boot", "--kernel", str(img), "--cmdline", "3").status == 7


def test_python_slow_path_device(kvm_ok, tiny_images):
    """A device written in Python on the PIO bus sees the guest's writes and answers reads."""
    from kvmvm.machine import Machine, MachineConfig
    from kvmvm.vm import BUS_PIO

    class Port:
        def __init__(self):
            self.got = bytearray()

        def read(self, offset, size):
            return b"\x5a" * size

        def write(self, offset, data):
            self.got += data

    r_fd, w_fd = os.pipe()
    port = Port()
    m = Machine(MachineConfig(kernel=str(tiny_images / "probe.elf"), cmdline="pyport=0x2f0",
                              serial_out_fd=w_fd))
    m.build()
    m.vm.add_py_device(BUS_PIO, 0x2F0, 1, port)
    res = m.run()
    os.close(w_fd)
    out = os.read(r_fd, 65536).decode()
    os.close(r_fd)
    assert res.status == 0
    assert port.got == b"kvm"
    assert "pyport-read: 0x5a" in out
    assert res.stats["py_calls"] == 4


BAD_INPUTS = [
    (["--kernel", "/nonexistent/vmlinux"], "kvmvm: kernel image not found: /nonexistent/vmlinux"),
    (["--kernel", "{text}"], "kvmvm: {text}: not an ELF or bzImage kernel image"),
    (["--kernel", "/"], "kvmvm: kernel image is a directory: /"),
    (["--kernel", "{hello}", "--memory", "0"], "kvmvm: --memory must be at least 16 MiB (got 0)"),
    (["--kernel", "{hello}", "--cpus", "0"], "kvmvm: --cpus must be between 1 and 64 (got 0)"),
    (["--kernel", "{hello}", "--cpus", "x"], None),
    (["--kernel", "{hello}", "--timeout", "-1"], "kvmvm: --timeout must be a positive number of seconds (got -1.0)"),
]


@pytest.mark.parametrize("args,line", BAD_INPUTS)
def test_bad_input_one_line_status_2(kvm_ok, tiny_images, tmp_path, args, line):
    text = tmp_path / "notes.txt"
    text.write_text("not a kernel\n")
    sub = {"{hello}": str(tiny_images / "hello.elf"), "{text}": str(text)}
    for k, v in sub.items():
        args = [a.replace(k, v) for a in args]
        line = line.replace(k, v) if line else line
    r = kvmvm("boot", *args)
    assert r.status == 2
    assert r.out == ""
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert "Traceback" not in r.err
    if line:
        assert lines[0] == line


def test_truncated_elf(kvm_ok, tiny_images, tmp_path):
    img = tmp_path / "trunc.elf"
    img.write_bytes((tiny_images / "hello.elf").read_bytes()[:300])
    r = kvmvm("boot", "--kernel", str(img))
    assert r.status == 2
    assert r.err.strip().startswith(f"kvmvm: {img}: segment ")
    assert "past the end of the file (truncated image?)" in r.err


def test_pvh_note_outside_memory(kvm_ok, tiny_images, tmp_path):
    from tests.unit.elfgen import make_elf

    img = tmp_path / "farnote.elf"
    img.write_bytes(make_elf(pvh=0x40000000))
    r = kvmvm("boot", "--kernel", str(img), "--memory", "64")
    assert r.status == 2
    assert r.err.strip() == f"kvmvm: {img}: PVH entry point 0x40000000 lies outside the loaded image"


def test_image_bigger_than_memory(kvm_ok, tmp_path):
    from tests.unit.elfgen import make_elf

    img = tmp_path / "big.elf"
    img.write_bytes(make_elf(memsz=64 << 20))
    r = kvmvm("boot", "--kernel", str(img), "--memory", "32")
    assert r.status == 2
    assert "does not fit in guest memory (32 MiB)" in r.err


def test_traceback_only_with_debug(kvm_ok, tmp_path):
    env = dict(os.environ, KVMVM_DEBUG="1")
    r = kvmvm("boot", "--kernel", "/nonexistent", env=env)
    assert r.status != 0 and "Traceback" in r.err


def test_missing_kvm_device_is_one_line(tiny_images, monkeypatch):
    from kvmvm.errors import KvmError
    from kvmvm.machine import Machine, MachineConfig

    with pytest.raises(KvmError, match=r"^/nonexistent/kvm does not exist") as e:
        Machine(MachineConfig(kernel=str(tiny_images / "hello.elf"), kvm_path="/nonexistent/kvm")).run()
    assert "\n" not in str(e.value)


def test_linux_kernel_on_pvm_is_refused_in_one_line(kvm_ok, tmp_path):
    """A Linux kernel (ELF "Linux" note) on a PVM /dev/kvm: one line naming the way out."""
    from tests.unit.elfgen import make_elf, note

    img = tmp_path / "vmlinux"
    img.write_bytes(make_elf(extra_notes=note(b"Linux", 6, b"\0\0\0\0")))
    r = kvmvm("boot", "--kernel", str(img), "--timeout", "1")
    if os.path.exists("/sys/module/kvm_pvm"):
        assert r.status == 1
        assert r.err.strip().splitlines() == [
            "kvmvm: this host's /dev/kvm is the PVM hypervisor, which cannot run a stock Linux "
            "guest; run `./dev boot` from a kvmvm checkout (it boots the guest inside a "
            "software-emulated standard-KVM test host) or use a host with hardware KVM"]
    else:   # hardware KVM: it boots (this fake kernel just halts until the timeout)
        assert r.status == 124


def test_console_input_reaches_the_guest_and_ends_with_eof(kvm_ok, tiny_images):
    """Piped stdin goes to the UART once the guest enables its FIFO and RX interrupts;
    the end of input arrives as ^D."""
    p = subprocess.run([*KVMVM, "boot", "--kernel", str(tiny_images / "echo.elf"), "--timeout", "30"],
                       input="abc\ndef\n", capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "echo: ready\nabc\ndef\necho: 8 bytes\n"


def test_pit_only_for_linux_kernels_unless_asked(kvm_ok, tiny_images, tmp_path, monkeypatch):
    """--pit auto gives the in-kernel PIT to Linux kernels only (its teardown is costly on
    some hosts); --pit on/off force it; the tiny guest boots either way."""
    from kvmvm.machine import Machine, MachineConfig
    from tests.unit.elfgen import make_elf, note

    hello = str(tiny_images / "hello.elf")
    for pit, want in (("auto", False), ("on", True), ("off", False)):
        r = kvmvm("boot", "--kernel", hello, "--pit", pit)
        assert r.status == 0 and "Hello from kvmvm tiny guest" in r.out, r.err
        m = Machine(MachineConfig(kernel=hello, pit=pit))
        try:
            m.build()
            assert m.wants_pit is want
        finally:
            m.close()
    monkeypatch.setenv("KVMVM_ALLOW_PVM", "1")     # build only: nothing runs
    img = tmp_path / "vmlinux"
    img.write_bytes(make_elf(extra_notes=note(b"Linux", 6, b"\0\0\0\0")))
    m = Machine(MachineConfig(kernel=str(img)))
    try:
        m.build()
        assert m.is_linux and m.wants_pit is True
    finally:
        m.close()
    r = kvmvm("boot", "--kernel", hello, "--pit", "sometimes")
    assert r.status == 2 and len(r.err.strip().splitlines()) == 1


def test_prepared_vm_is_used_when_it_matches(kvm_ok, tiny_images, tmp_path):
    """A VM created ahead on a C thread (kvmvm boot starts one first thing) boots the
    guest when its device and RAM match the configuration; otherwise it is freed and a
    new VM made; a bad device path is reported as without one."""
    from kvmvm.boot.layout import MiB, RamLayout
    from kvmvm.errors import KvmError
    from kvmvm.machine import Machine, MachineConfig
    from kvmvm.vm import PreparedVm

    hello = str(tiny_images / "hello.elf")
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for prep_mib, used in ((128, True), (64, False)):
            p = PreparedVm("/dev/kvm", RamLayout(prep_mib * MiB).regions)
            m = Machine(MachineConfig(kernel=hello, serial_out_fd=devnull), prepared=p)
            m.build()
            assert (m.vm.ram_regions == len(m.ram.regions)) is used and m.prepared is None
            res = m.run()
            assert res.status == 0 and res.reason == "reset"
        for pit, used in (("auto", False), ("on", True)):    # a PIT only where one is wanted
            p = PreparedVm("/dev/kvm", RamLayout(128 * MiB).regions, pit=True)
            m = Machine(MachineConfig(kernel=hello, serial_out_fd=devnull, pit=pit), prepared=p)
            m.build()
            assert (m.vm.ram_regions == len(m.ram.regions)) is used and m.wants_pit is used
            assert m.run().status == 0
        PreparedVm("/dev/kvm", RamLayout(128 * MiB).regions).discard()   # never used: freed
        p = PreparedVm(str(tmp_path / "kvm"), RamLayout(128 * MiB).regions)
        m = Machine(MachineConfig(kernel=hello, kvm_path=str(tmp_path / "kvm")), prepared=p)
        with pytest.raises(KvmError, match="does not exist"):
            m.build()
        m.close()
    finally:
        os.close(devnull)
