"""What the README promises about `kvmvm boot`, each with a test that could fail: exit
statuses of every outcome, signals, the terminal restored, --json on failures, sockets
removed on every ending, and the flags that tiny guests can show."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import termios
import time
from pathlib import Path

import pytest

from kvmvm.machine import outcome_of
from kvmvm.vm import StopInfo

from .conftest import KVMVM, ROOT, kvmvm

pytestmark = pytest.mark.host


# --- the outcome table, one row per stop reason (no VM needed) ---

@pytest.mark.parametrize("reason,code,rip,outcome,status,message", [
    ("debug-exit", 3, 0, "ok", 7, "guest wrote 0x3 to the debug-exit port (status 7)"),
    ("reset", 0, 0, "ok", 0, "guest reset the machine"),
    ("poweroff", 0, 0, "ok", 0, "guest powered off"),
    ("halt", 0, 0, "ok", 0, "guest halted"),
    ("panic", 1, 0, "failed", 3, "guest kernel panicked (pvpanic); see its console output above"),
    ("triple-fault", 0, 0x1234, "failed", 1, "guest triple-faulted (KVM_EXIT_SHUTDOWN) near rip 0x1234"),
    ("internal-error", 1, 0x99, "failed", 1, "KVM internal error: suberror 1 (emulation failure) at guest rip 0x99"),
    ("fail-entry", 0x80000021, 0, "failed", 1, "VM entry failed: hardware entry failure reason 0x80000021"),
    ("timeout", 0, 0, "timeout", 124, "timed out after 2.5 s; VM stopped"),
    ("stopped", 0, 0, "stopped", 130, "VM stopped on request"),
    ("host-error", 5, 0, "failed", 1, "host error while running the VM: Input/output error"),
    ("unknown-exit", 77, 0x10, "failed", 1, "unhandled KVM exit reason 77 at guest rip 0x10"),
])
def test_outcome_table(reason, code, rip, outcome, status, message):
    assert outcome_of(StopInfo(reason, code, 0, rip), 2.5) == (outcome, status, message)


def test_debug_exit_statuses_are_unambiguous():
    """Every value 0-255 maps to a status that no other outcome of `kvmvm boot` uses, and
    values 0-127 each to a status of their own."""
    from kvmvm.machine import debug_exit_status

    own = {0, 1, 2, 3, 124, 130}
    statuses = [debug_exit_status(v) for v in range(256)]
    assert not own & set(statuses)
    assert len(set(statuses[:128])) == 128
    assert set(statuses[128:]) == {8}
    assert [debug_exit_status(v) for v in (0, 1, 2, 3, 0x10, 0x7F)] == [4, 6, 5, 7, 33, 255]
    out, st, msg = outcome_of(StopInfo("debug-exit", 0x90, 0, 0), None)
    assert (out, st) == ("ok", 8) and "0x90" in msg


# --- --json on failures ---

def _json_of(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_json_on_panic_triple_fault_and_timeout(kvm_ok, tiny_images):
    r = kvmvm("boot", "--kernel", str(tiny_images / "panic.elf"), "--json")
    assert r.status == 3, r.err
    j = _json_of(r.out)
    assert (j["outcome"], j["reason"], j["status"], j["code"]) == ("failed", "panic", 3, 1)
    assert j["message"] == "guest kernel panicked (pvpanic); see its console output above"
    assert r.err.strip() == f"kvmvm: {j['message']}"

    r = kvmvm("boot", "--kernel", str(tiny_images / "triplefault.elf"), "--json")
    j = _json_of(r.out)
    assert (r.status, j["outcome"], j["reason"], j["status"]) == (1, "failed", "triple-fault", 1)
    assert j["rip"] > 0x100000 and j["message"] == f"guest triple-faulted (KVM_EXIT_SHUTDOWN) near rip {j['rip']:#x}"

    r = kvmvm("boot", "--kernel", str(tiny_images / "halt.elf"), "--timeout", "0.3", "--json")
    j = _json_of(r.out)
    assert (r.status, j["outcome"], j["reason"], j["status"]) == (124, "timeout", "timeout", 124)
    assert j["message"] == "timed out after 0.3 s; VM stopped"


# --- flags a tiny guest can show ---

def test_entry_pvh_no_acpi_no_rng_and_initrd(kvm_ok, tiny_images, tmp_path):
    r = kvmvm("boot", "--kernel", str(tiny_images / "probe.elf"), "--entry", "pvh", "--no-acpi",
              "--no-rng", "--json")
    assert r.status == 0, r.err
    assert "entry: pvh" in r.out.splitlines()
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"\xa5" * 12345)
    r = kvmvm("boot", "--kernel", str(tiny_images / "probe.elf"), "--initrd", str(initrd))
    assert r.status == 0, r.err
    r = kvmvm("boot", "--kernel", str(tiny_images / "probe.elf"), "--initrd", str(tmp_path / "nope"))
    assert r.status == 2 and r.err.count("\n") == 1 and "nope" in r.err


def test_no_rng_removes_the_device(kvm_ok, tiny_images):
    env = dict(os.environ, KVMVM_VIRTIO_PATH="exit")
    with_rng = kvmvm("boot", "--kernel", str(tiny_images / "virtio-rng.elf"), "--timeout", "30", env=env)
    assert with_rng.status == 0, with_rng.out + with_rng.err
    without = kvmvm("boot", "--kernel", str(tiny_images / "virtio-rng.elf"), "--no-rng", "--timeout", "30", env=env)
    assert without.status != 0, without.out        # the driver finds no rng device


# --- signals and cleanup ---

def _wait_for(path: Path, proc: subprocess.Popen, secs: float = 20) -> None:
    deadline = time.monotonic() + secs
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_ends_the_vm_with_130_and_removes_its_socket(kvm_ok, tiny_images, tmp_path, sig):
    uds = tmp_path / "v.sock"
    p = subprocess.Popen([*KVMVM, "boot", "--kernel", str(tiny_images / "halt.elf"), "--vsock",
                          f"cid=3,uds={uds}", "--timeout", "60"], cwd=ROOT, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(uds, p)
    time.sleep(0.1)
    p.send_signal(sig)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 130, err
    assert err.strip() == "kvmvm: VM stopped on request"
    assert "Traceback" not in err
    assert not uds.exists(), f"vsock socket left behind after {sig.name}"


def test_timeout_removes_the_socket(kvm_ok, tiny_images, tmp_path):
    uds = tmp_path / "v.sock"
    r = kvmvm("boot", "--kernel", str(tiny_images / "halt.elf"), "--vsock", f"cid=3,uds={uds}",
              "--timeout", "0.5")
    assert r.status == 124
    assert not uds.exists()


# --- the terminal is restored on every exit path ---

def _boot_on_pty(args: list[str], sig: int | None = None) -> tuple[int, list, list, str]:
    """Run kvmvm with a pty as stdin/stdout: (status, termios before, termios after, output)."""
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    p = subprocess.Popen([*KVMVM, "boot", *args], cwd=ROOT, stdin=slave, stdout=slave,
                         stderr=slave, start_new_session=True)
    out = b""
    if sig is not None:
        deadline = time.monotonic() + 20
        while b"halt: now" not in out and time.monotonic() < deadline:
            out += _read_some(master)
        p.send_signal(sig)
    rc = p.wait(timeout=30)
    after = termios.tcgetattr(slave)
    out += _read_some(master, 0.2)
    os.close(slave)
    os.close(master)
    return rc, before, after, out.decode(errors="replace")


def _read_some(fd: int, wait: float = 0.05) -> bytes:
    import select

    r, _, _ = select.select([fd], [], [], wait)
    try:
        return os.read(fd, 65536) if r else b""
    except OSError:
        return b""


@pytest.mark.parametrize("name,extra,sig,status", [
    ("hello", [], None, 0),
    ("triplefault", [], None, 1),
    ("halt", ["--timeout", "0.5"], None, 124),
    ("halt", ["--timeout", "30"], signal.SIGTERM, 130),
    ("halt", ["--timeout", "30"], signal.SIGHUP, 130),
])
def test_terminal_restored_on_every_exit(kvm_ok, tiny_images, name, extra, sig, status):
    rc, before, after, out = _boot_on_pty(["--kernel", str(tiny_images / f"{name}.elf"), *extra], sig)
    assert rc == status, out
    assert after == before, "kvmvm left the terminal in a different mode"


def test_ctrl_c_on_the_terminal_goes_to_the_guest_not_kvmvm(kvm_ok, tiny_images):
    """In raw mode ^C is a byte for the guest (ISIG off): the echo guest gets it."""
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    p = subprocess.Popen([*KVMVM, "boot", "--kernel", str(tiny_images / "echo.elf"), "--timeout", "30"],
                         cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    out = b""
    deadline = time.monotonic() + 20
    while b"echo: ready" not in out and time.monotonic() < deadline:
        out += _read_some(master)
    time.sleep(0.3)
    os.write(master, b"x\x03y\n\x04")
    while p.poll() is None and time.monotonic() < deadline:
        out += _read_some(master)
    out += _read_some(master, 0.2)
    after = termios.tcgetattr(slave)
    os.close(slave)
    os.close(master)
    assert p.wait(timeout=10) == 0, out
    assert after == before
    assert b"echo: 4 bytes" in out, out          # x, ^C, y, newline reached the guest
