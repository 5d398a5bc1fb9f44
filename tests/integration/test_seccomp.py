"""seccomp filters on the device threads (virtio workers, console writer): on by default,
off with --seccomp-level 0; a forbidden call ends the process with one line and status 159.
(Every other test runs with the filters on, so each device path is checked against them.)"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.integration.conftest import kvmvm
from tests.integration.test_hostile import kill_quietly, start, stop_with, wait_line
from tests.integration.test_virtio import elf

pytestmark = pytest.mark.host


def test_forbidden_call_from_a_device_thread_is_stopped(tiny_images, kvm_ok):
    env = dict(os.environ, KVMVM_SECCOMP_SELFTEST="1")
    r = kvmvm("boot", "--kernel", elf("virtio-rng"), "--timeout", "30", env=env)
    assert r.status == 159, r.out + r.err
    line = r.err.strip().splitlines()
    assert len(line) == 1 and "seccomp: thread" in line[0] and "system call 110" in line[0], r.err


def test_level_0_turns_the_filters_off(tiny_images, kvm_ok):
    env = dict(os.environ, KVMVM_SECCOMP_SELFTEST="1")
    r = kvmvm("boot", "--kernel", elf("virtio-rng"), "--seccomp-level", "0", "--timeout", "30",
              env=env)
    assert r.status == 0, r.out + r.err
    assert "virtio-rng: ok" in r.out


def _seccomp_modes(pid: int) -> dict[str, int]:
    out = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        name = (t / "comm").read_text().strip()
        for ln in (t / "status").read_text().splitlines():
            if ln.startswith("Seccomp:"):
                out[name] = max(out.get(name, 0), int(ln.split()[1]))
    return out


@pytest.mark.parametrize("level", ["1", "0"])
def test_which_threads_are_filtered(tiny_images, kvm_ok, tmp_path, level):
    p = start("--kernel", elf("flood"), "--cmdline", "mode=halt", "--seccomp-level", level,
              "--timeout", "30")
    try:
        wait_line(p, "flood halt: running")
        modes = _seccomp_modes(p.pid)
        stop_with(p, signal.SIGTERM)
    finally:
        kill_quietly(p)
    want = 2 if level == "1" else 0     # 2: SECCOMP_MODE_FILTER
    for name in ("virtio-rng", "serial-out"):     # the devices this guest started
        assert modes.get(name) == want, modes
    assert modes.get("vcpu0") == 0, modes   # the Python slow path may run there
    assert p.returncode == 130
