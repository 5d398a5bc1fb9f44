"""seccomp: every thread class of a running `kvmvm boot` is filtered, and a forbidden call
from any of them stops the process with one line and exit status 148.

The forbidden call comes from a test hook (KVMVM_TEST_HOOKS=1 plus
KVMVM_TEST_SECCOMP_VIOLATE=<class>): the thread makes socket(AF_INET, ...) right after
its own filter is in place, as a compromised thread would.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import KVMVM, ROOT, TINY_OUT, kvmvm

pytestmark = pytest.mark.host

# the guest each class needs to exist: workers (and the spawner) come with a virtio device
GUEST = {"vcpu": "hello", "serial-writer": "hello", "serial-reader": "echo", "main": "hello",
         "worker": "virtio-rng", "spawner": "virtio-rng"}


def hooked(cls: str) -> dict:
    return dict(os.environ, KVMVM_TEST_HOOKS="1", KVMVM_TEST_SECCOMP_VIOLATE=cls)


def line_for(cls: str) -> str:
    return (f"kvmvm: seccomp: the {cls} thread made a forbidden system call: socket (41); "
            f"stopping (exit status 148)")


@pytest.mark.parametrize("cls", sorted(GUEST))
def test_forbidden_call_from_each_thread_class_is_stopped(kvm_ok, tiny_images, cls):
    r = kvmvm("boot", "--kernel", str(TINY_OUT / f"{GUEST[cls]}.elf"), "--timeout", "20",
              env=hooked(cls), stdin=subprocess.PIPE if cls == "serial-reader" else subprocess.DEVNULL)
    assert r.status == 148, (r.out, r.err)
    assert r.err.strip().splitlines() == [line_for(cls)]


def test_hook_needs_test_hooks_on(kvm_ok, tiny_images):
    env = dict(os.environ, KVMVM_TEST_SECCOMP_VIOLATE="vcpu")
    env.pop("KVMVM_TEST_HOOKS", None)
    r = kvmvm("boot", "--kernel", str(TINY_OUT / "hello.elf"), env=env)
    assert r.status == 0, r.err


def test_level_0_installs_nothing(kvm_ok, tiny_images):
    r = kvmvm("boot", "--kernel", str(TINY_OUT / "hello.elf"), "--seccomp-level", "0",
              env=hooked("vcpu"))
    assert (r.status, r.err) == (0, "")


def test_level_1_checks_calls_not_arguments(kvm_ok, tiny_images):
    """The worker may make Unix sockets (vsock): socket() is on its list, AF_INET is refused
    only by level 2's argument check."""
    rng = str(TINY_OUT / "virtio-rng.elf")
    r1 = kvmvm("boot", "--kernel", rng, "--seccomp-level", "1", "--timeout", "20",
               env=hooked("worker"))
    assert r1.status == 0, r1.err
    r2 = kvmvm("boot", "--kernel", rng, "--seccomp-level", "2", "--timeout", "20",
               env=hooked("worker"))
    assert (r2.status, r2.err.strip()) == (148, line_for("worker"))
    # the vCPU has no socket() at all: level 1 stops it too
    r3 = kvmvm("boot", "--kernel", str(TINY_OUT / "hello.elf"), "--seccomp-level", "1",
               env=hooked("vcpu"))
    assert (r3.status, r3.err.strip()) == (148, line_for("vcpu"))


def seccomp_modes(pid: int) -> dict[str, tuple[int, int]]:
    """thread name -> (Seccomp mode, number of filters), from /proc."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            st = (task / "status").read_text()
        except OSError:
            continue
        mode = int(re.search(r"^Seccomp:\s+(\d+)", st, re.M).group(1))
        nf = int(re.search(r"^Seccomp_filters:\s+(\d+)", st, re.M).group(1))
        out[task.name] = (mode, nf)
    return out


@pytest.mark.parametrize("level", [0, 2])
def test_every_thread_of_a_running_vm_is_filtered(kvm_ok, tiny_images, level):
    """halt.elf waits for ever: look at the threads of the live process, then SIGTERM it."""
    p = subprocess.Popen([*KVMVM, "boot", "--kernel", str(TINY_OUT / "halt.elf"), "--cpus", "2",
                          "--seccomp-level", str(level)], cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "halt: now\n"
        time.sleep(0.3)     # the main thread filters itself right after starting the VM
        modes = seccomp_modes(p.pid)
        # main, 2 vCPUs, console writer and reader, spawner
        assert len(modes) >= 6, modes
        if level == 0:
            assert all(m == (0, 0) for m in modes.values()), modes
        else:
            assert all(m[0] == 2 and m[1] >= 1 for m in modes.values()), modes
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 130, err
    assert err.strip() == "kvmvm: VM stopped on request"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_and_json_under_the_main_filter(kvm_ok, tiny_images, sig):
    p = subprocess.Popen([*KVMVM, "boot", "--kernel", str(TINY_OUT / "halt.elf"), "--json"],
                         cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "halt: now\n"
        time.sleep(0.3)
        p.send_signal(sig)
        out, err = p.communicate(timeout=10)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 130, err
    assert '"reason": "stopped"' in out


def test_timeout_and_json_under_the_main_filter(kvm_ok, tiny_images):
    r = kvmvm("boot", "--kernel", str(TINY_OUT / "halt.elf"), "--timeout", "0.5", "--json")
    assert r.status == 124, r.err
    assert '"reason": "timeout"' in r.out


def test_allowlists_are_what_the_docs_say():
    """docs/security.md lists each class's calls; the lists come from the C tables."""
    from kvmvm import seccomp

    doc = (ROOT / "docs" / "security.md").read_text()
    for cls in ("common", *seccomp.CLASSES):
        calls = seccomp.allowlist(cls)
        assert "execve" not in calls and "ptrace" not in calls
        assert "socket" not in calls or cls in ("worker", "spawner")
        m = re.search(rf"^\| `{cls}` \| (.*?) \|", doc, re.M)
        assert m, f"docs/security.md has no row for {cls}"
        assert m.group(1).split() == [f"`{c}`" for c in calls], cls


def _named_modes(pid: int) -> dict[str, int]:
    """thread name (comm) -> Seccomp mode, for the threads kvmvm names."""
    out = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (t / "comm").read_text().strip()
            st = (t / "status").read_text()
        except OSError:
            continue
        out[name] = int(re.search(r"^Seccomp:\s+(\d+)", st, re.M).group(1))
    return out


def test_named_device_threads_and_vcpus_are_filtered(tiny_images, kvm_ok):
    """A guest that keeps its rng device busy: its worker, the console writer and the vCPU
    are all in filter mode (2)."""
    from tests.integration.test_hostile import kill_quietly, start, stop_with, wait_line

    p = start("--kernel", str(TINY_OUT / "flood.elf"), "--cmdline", "mode=halt", "--timeout", "30")
    try:
        wait_line(p, "flood halt: running")
        modes = _named_modes(p.pid)
        stop_with(p, signal.SIGTERM)
    finally:
        kill_quietly(p)
    for name in ("virtio-rng", "serial-out", "vcpu0"):
        assert modes.get(name) == 2, modes
    assert p.returncode == 130


# Python threads that each malloc (and so each take a glibc arena), then `kvmvm boot` in the
# same process: as k varies, the thread whose first malloc makes glibc size its arena limit
# (reading /sys/devices/system/cpu/online) falls on each of kvmvm's filtered threads in turn.
_ARENAS = """
import sys, threading
ev, held = threading.Event(), []
def hold():
    held.append(bytearray(4000))
    ev.wait()
for _ in range(int(sys.argv[2])):
    threading.Thread(target=hold, daemon=True).start()
from kvmvm.cli import main
try:
    main(["boot", "--kernel", sys.argv[1], "--timeout", "20"])
finally:
    ev.set()
"""


def test_filtered_threads_never_trip_over_glibc_malloc(kvm_ok, tiny_images):
    """The Firecracker-API Linux test died of SIGSYS (no line, exit -31): its ninth malloc
    arena was first needed by a virtio worker, under its filter, and glibc opened a /sys file."""
    import sys
    for k in range(11):
        r = subprocess.run([sys.executable, "-c", _ARENAS, str(TINY_OUT / "virtio-rng.elf"), str(k)],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 0 and "virtio-rng: ok" in r.stdout, (k, r.returncode, r.stderr[-2000:])
