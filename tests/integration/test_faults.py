"""Host-side faults under running VMs: a full disk, a TAP deleted under the VM, signals at
random moments of many lifecycles. The guest sees errors; the host process neither hangs
nor crashes nor leaves anything behind."""
from __future__ import annotations

import errno
import os
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import KVMVM, ROOT, kvmvm
from tests.integration.test_hostile import (STOP_LIMIT_S, kill_quietly, start, stop_with,
                                            wait_line)
from tests.integration.test_virtio import elf, exited_normally, netns  # noqa: F401

pytestmark = pytest.mark.host

CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int, name: str) -> float:
    """CPU seconds of pid's threads called name (kvmvm names its threads)."""
    total = 0.0
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (t / "comm").read_text().strip() != name:
                continue
            f = (t / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / CLK_TCK
        except OSError:
            pass
    return total


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"cannot mount a tmpfs: {r.stderr}"
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_is_an_io_error_for_the_guest(tiny_images, kvm_ok, tiny_tmpfs):
    img = tiny_tmpfs / "disk.img"
    with open(img, "wb") as f:
        f.truncate(1 << 20)     # sparse: every write needs a new page
    filler = tiny_tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"F" * 4096) == 4096:
            pass
    except OSError:
        pass        # ENOSPC: the filesystem is full
    os.close(fd)
    filled = filler.read_bytes()
    r = kvmvm("boot", "--kernel", elf("virtio-blk"), "--drive", str(img), "--timeout", "30")
    exited_normally(r)
    assert "FAIL blk0: write (status 1" in r.out, r.out + r.err      # IOERR reached the guest
    assert r.status == 6, r.err                                       # the guest's own failure (main returned 1: debug-exit 1)
    assert "Traceback" not in r.err and "internal error" not in r.err
    assert img.read_bytes() == bytes(1 << 20)
    assert filler.read_bytes() == filled


@pytest.fixture(scope="session")
def eiofs_bin(tmp_path_factory) -> Path:
    """tests/integration/eiofs.c, built (libfuse3-dev)."""
    src = Path(__file__).with_name("eiofs.c")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True)
    assert flags.returncode == 0, f"pkg-config fuse3 failed (Debian: libfuse3-dev): {flags.stderr}"
    out = tmp_path_factory.mktemp("eiofs") / "eiofs"
    r = subprocess.run(["cc", "-O1", "-Wall", "-o", str(out), str(src), *flags.stdout.split()],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"eiofs did not build:\n{r.stderr}"
    return out


EIO_SIZE, EIO_BAD_SECTOR = 1 << 20, 8


@pytest.fixture
def eio_drive(eiofs_bin, tmp_path):
    """A 1 MiB drive on FUSE whose host reads and writes of sector 8 fail with EIO. Yields
    (image path, a function that unmounts and returns eiofs's counters line)."""
    mnt = tmp_path / "eio"
    mnt.mkdir()
    bad = EIO_BAD_SECTOR * 512
    fs = subprocess.Popen([str(eiofs_bin), str(mnt), str(EIO_SIZE), str(bad), "512"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    img = mnt / "disk.img"
    deadline = time.monotonic() + 10
    while not os.path.ismount(mnt):
        assert fs.poll() is None, f"eiofs exited: {fs.stderr.read()}"
        assert time.monotonic() < deadline, "eiofs did not mount within 10 s"
        time.sleep(0.02)
    ended = []

    def finish() -> str:
        if not ended:
            subprocess.run(["umount", str(mnt)], capture_output=True)
            try:
                ended.append(fs.communicate(timeout=10)[1])
            except subprocess.TimeoutExpired:
                fs.kill()
                ended.append(fs.communicate()[1])
        return ended[0]
    try:
        yield img, finish
    finally:
        finish()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_eio_from_the_backing_file_is_an_io_error_for_that_request_only(tiny_images, kvm_ok,
                                                                        eio_drive):
    img, finish = eio_drive
    with open(img, "rb") as f:      # the host really fails there
        with pytest.raises(OSError) as e:
            os.pread(f.fileno(), 512, EIO_BAD_SECTOR * 512)
        assert e.value.errno == errno.EIO
    rounds = 4
    t0 = time.monotonic()
    r = kvmvm("boot", "--kernel", elf("blk-eio"), "--drive", str(img), "--cmdline",
              f"bad={EIO_BAD_SECTOR} rounds={rounds}", "--timeout", "30", timeout=60)
    took = time.monotonic() - t0
    exited_normally(r)
    assert r.status == 0, r.out + r.err
    for i in range(1, rounds + 1):      # IOERR each time, and the device served what followed
        assert f"blk-eio: round {i}: read bad 1, write bad 1, span 1, good ok" in r.out, r.out
    assert f"blk-eio: ok {rounds} rounds" in r.out, r.out
    assert "Traceback" not in r.err and "internal error" not in r.err, r.err
    assert took < 30, f"kvmvm took {took:.1f} s"
    with open(img, "rb") as f:          # the last good write reached the backing file
        assert f.read(1024)[512:] == bytes((rounds * 31 + k) & 0xff for k in range(512))
    counts = finish()
    m = re.search(r"eiofs: (\d+) reads (\d+) writes (\d+) errors", counts)
    assert m, counts
    # every bad request failed on the host: read, write and span per round, plus the probe
    assert int(m.group(3)) >= 3 * rounds + 1, counts


def test_tap_deleted_under_a_running_vm(tiny_images, kvm_ok, netns):
    vm = subprocess.Popen(["ip", "netns", "exec", netns, *KVMVM, "boot", "--kernel",
                           elf("virtio-net"), "--net", "tap=ktap0", "--cmdline", "count=1",
                           "--timeout", "60"],
                          cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    try:
        seen = wait_line(vm, "net: mac")
        time.sleep(0.3)
        c0 = thread_cpu(vm.pid, "virtio-net")
        subprocess.run(["ip", "-n", netns, "link", "del", "ktap0"], check=True)
        time.sleep(1.5)
        used = thread_cpu(vm.pid, "virtio-net") - c0
        assert used < 0.3, f"the virtio-net worker burnt {used:.2f} s of CPU in 1.5 s"
        # the device is marked broken; the guest notices (its driver polls the status) and
        # fails on its own, or is still waiting and is stopped
        took = stop_with(vm, signal.SIGTERM) if vm.poll() is None else 0.0
    finally:
        kill_quietly(vm)
    out, err = seen + vm.stdout.read().decode(), vm.stderr.read().decode()
    assert vm.returncode in (130, 6), out + err     # 6: the guest failed on its own (debug-exit 1)
    assert vm.returncode == 130 or "FAIL" in out, out
    assert "Traceback" not in err and "internal error" not in err
    assert took < STOP_LIMIT_S, f"stop took {took:.2f} s"


def _leftovers(ns: str, tmp: Path) -> list[str]:
    links = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True).stdout
    out = [ln.split(":")[1].strip() for ln in links.splitlines() if "kvlc" in ln]
    out += [p.name for p in tmp.iterdir() if p.name not in ("disk.img",)]
    return out


def test_signals_at_random_moments_leave_nothing_behind(tiny_images, kvm_ok, netns, tmp_path):
    """Lifecycles with blk, net and vsock attached, each ended by a signal at a random
    moment (start-up included). SIGKILL leaves the vsock socket, which the next start
    reclaims; every other ending removes it. TAPs kvmvm created vanish on every ending."""
    rnd = random.Random(os.environ.get("KVMVM_SEED", "9"))
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    uds = tmp_path / "v.sock"
    sigs = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL]
    stale = None
    for i in range(int(os.environ.get("KVMVM_LIFECYCLES", "12"))):
        sig = sigs[i % len(sigs)]
        p = subprocess.Popen(["ip", "netns", "exec", netns, *KVMVM, "boot", "--kernel",
                              elf("flood"), "--cmdline", "mode=rng", "--drive", str(disk),
                              "--net", f"tap=kvlc{i}", "--vsock", f"cid=3,uds={uds}",
                              "--timeout", "30"],
                             cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        try:
            time.sleep(rnd.uniform(0.25, 1.5))     # from just after the interpreter started
            took = stop_with(p, sig)
        finally:
            kill_quietly(p)
        err = p.stderr.read().decode()
        assert "Traceback" not in err and "internal error" not in err, err
        if sig == signal.SIGKILL:
            assert p.returncode == -9
        else:
            assert p.returncode in (130, 2, 1), (sig, p.returncode, err)
            assert took < STOP_LIMIT_S + 0.5, f"{sig!r} took {took:.2f} s"
        if sig == signal.SIGKILL and uds.exists():
            stale = uds.stat().st_ino      # a killed kvmvm's socket: the next start reclaims it
        left = _leftovers(netns, tmp_path)
        if "v.sock" in left and uds.stat().st_ino == stale:
            left.remove("v.sock")          # still that one: this run ended before reclaiming
        assert not left, f"after {sig!r}: left behind {left}"
    # whatever the last ending left, the next start takes over
    r = subprocess.run(["ip", "netns", "exec", netns, *KVMVM, "boot", "--kernel", elf("hello"),
                        "--vsock", f"cid=3,uds={uds}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert not uds.exists()


def test_api_lifecycles_leak_no_fds_or_threads(tiny_images, kvm_ok, tmp_path):
    """In one process: VMs with blk, vsock and rng built, run and stopped from another
    thread at random moments; fds and threads come back to where they were."""
    from kvmvm.machine import Machine, MachineConfig

    rnd = random.Random(5)
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    devnull = os.open(os.devnull, os.O_WRONLY)

    def counts():
        return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task"))

    base = counts()
    for i in range(10):
        m = Machine(MachineConfig(kernel=elf("flood"), cmdline="mode=rng", drives=[str(disk)],
                                  vsock=f"cid=3,uds={tmp_path}/v.sock", serial_out_fd=devnull,
                                  timeout=20))
        t = threading.Timer(rnd.uniform(0.0, 0.6), lambda: m.vm and m.vm.stop())
        m.build()
        t.start()
        res = m.run()
        t.join()
        assert res.outcome in ("stopped", "timeout"), res
    # a thread is joined (pthread_join, Thread.join) a moment before the kernel takes it out
    # of /proc/self/task: a leak stays, that moment passes
    settle = time.monotonic() + 2
    while counts() != base and time.monotonic() < settle:
        time.sleep(0.01)
    assert counts() == base, f"fds/threads before {base}, after {counts()}"
    os.close(devnull)
    assert not (tmp_path / "v.sock").exists()
