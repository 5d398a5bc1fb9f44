"""The standard-KVM test host (tests/kvmhost) itself, on the host: each test boots a real L1.

Boots cost ~8-15 s each under TCG, so one boot checks many things at once.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.kvmhost import run as kvmhost_run
from tests.kvmhost.cpio import Cpio
from tests.kvmhost.runner import RUN_PREFIX

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def qemu_installed():
    """The test host is QEMU: scripts/setup.sh installs it; missing, these tests fail (never skip)."""
    assert shutil.which("qemu-system-x86_64"), "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"


def kvmhost(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.kvmhost", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_torn_down(pid: int) -> None:
    """No QEMU of that kvmhost process and no run directory of it remain."""
    tag = f"{RUN_PREFIX}{pid}-".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert tag not in cmdline, f"left-over process {proc.name}: {cmdline[:200]!r}"
    assert not list(Path(tempfile.gettempdir()).glob(f"{RUN_PREFIX}{pid}-*")), "left-over run directory"


SCRIPT = r"""
echo out
echo err >&2
test -c /dev/kvm && echo "kvm: standard"
test -e /sys/module/kvm_pvm && echo "kvm: PVM"
test -d /sys/module/kvm_amd && echo "kvm_amd: loaded"
test -c /dev/net/tun && echo "tun: yes"
grep -q '^cgroup2 /sys/fs/cgroup cgroup2 ' /proc/mounts && echo "cgroup2: mounted"
grep -qw overlay /proc/filesystems && echo "overlay: yes"
echo "cwd: $(pwd)"
echo "kvmvm_home: $KVMVM_HOME"
echo written > build/kvmhost-test/from-l1
touch /usr/kvmhost-ro-probe 2>/dev/null || echo "root: read-only"
exit 3
"""


@pytest.fixture(scope="module")
def failing_run():
    shared = ROOT / "build" / "kvmhost-test"
    shutil.rmtree(shared, ignore_errors=True)
    shared.mkdir(parents=True)
    res = kvmhost_run(["sh", "-c", SCRIPT], timeout=240, cwd=ROOT)  # the Python API
    yield res, shared
    shutil.rmtree(shared, ignore_errors=True)


def test_status_and_output_come_back(failing_run):
    res, _ = failing_run
    assert (res.status, res.timed_out) == (3, False), res.output
    lines = res.output.splitlines()
    assert "out" in lines and "err" in lines
    assert "Linux version" not in res.output and "@@kvmhost" not in res.output  # no kernel or init noise
    assert res.ready_s is not None and 0 < res.ready_s < res.total_s


def test_l1_has_standard_kvm_and_the_shares(failing_run):
    res, shared = failing_run
    out = res.output
    lines = out.splitlines()
    assert "kvm: standard" in lines and "kvm_amd: loaded" in lines and "kvm: PVM" not in lines, out
    assert "tun: yes" in lines
    assert "cgroup2: mounted" in lines and "overlay: yes" in lines   # crun and podman's storage need them
    assert f"cwd: {ROOT}" in lines
    assert "root: read-only" in lines
    assert any(line.startswith("kvmvm_home: /") for line in lines)
    assert (shared / "from-l1").read_text() == "written\n"  # the checkout is shared read-write
    assert_torn_down(os.getpid())


def test_timeout_kills_the_command_and_l1():
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "tests.kvmhost", "run", "--timeout", "30", "--",
                             "sh", "-c", "echo started; sleep 600"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 124, err
    assert "kvmhost: timeout after 30 s" in err
    assert "started" in out  # the command was running when it was killed
    assert took < 45
    assert "kvmhost: L1 ready in " in err  # the command ran, so L1 became ready
    assert_torn_down(proc.pid)


def test_a_crashed_l1_kernel_is_kept_and_reported_as_a_test_host_failure(tmp_path):
    """L1's kernel panics under the command: its console is kept, the oops shown, status 124
    (as a freeze: scripts/test.sh then reruns the unfinished tests in a fresh L1)."""
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "tests.kvmhost", "run", "--timeout", "240", "--report", str(report),
                           "--", "sh", "-c", "echo crashing; echo c > /proc/sysrq-trigger; sleep 600"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 124, proc.stderr
    assert "crashing" in proc.stdout
    assert "kvmhost: L1's kernel died; its console from the first sign of trouble:" in proc.stderr
    assert "sysrq triggered crash" in proc.stderr, proc.stderr
    kept = json.loads(report.read_text())["stalled"]
    assert kept and kept.endswith("-crashed"), kept
    assert f"L1 crashed before the command finished; its console is in {kept}" in proc.stderr
    assert "sysrq triggered crash" in Path(kept, "console.log").read_text(errors="replace")
    assert "Traceback" not in proc.stderr
    shutil.rmtree(kept)
    assert_torn_down(os.getpid())


def test_sigterm_tears_l1_down():
    proc = subprocess.Popen([sys.executable, "-m", "tests.kvmhost", "run", "--timeout", "240", "--",
                             "sleep", "600"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # QEMU is up, L1 still booting
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    assert_torn_down(proc.pid)


def test_missing_qemu_is_one_clear_line(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))
    res = kvmhost("run", "--", "true", env=env, timeout=60)
    assert res.returncode == 125
    assert res.stderr.strip() == "kvmhost: qemu-system-x86_64 not found (scripts/setup.sh installs it)"


def test_cpio_archive_is_readable_by_cpio(tmp_path):
    c = Cpio()
    c.dir("bin")
    c.file("bin/hello", b"hi\n", 0o755)
    c.symlink("bin/sh", "hello")
    c.chardev("console", 5, 1)
    c.write(tmp_path / "a.gz")
    assert shutil.which("cpio"), "cpio not installed (apt-get install cpio)"
    listing = subprocess.run(f"gzip -dc {tmp_path}/a.gz | cpio -tv", shell=True, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in listing.stdout.splitlines()]
    assert names == ["bin", "bin/hello", "bin/sh", "console"]
