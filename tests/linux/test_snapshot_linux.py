"""Snapshot, restore and fork of Linux guests (linux tier: standard KVM only).

The guest runs kvmvm's default kernel and initramfs with its pipe console (a shell reading
/dev/console line by line). Machines run in this process through the Python API; each
has its own console pipe and output file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmvm.cli.booting import DEFAULT_LINUX_CMDLINE
from kvmvm.image import cached_default
from kvmvm.machine import Machine, MachineConfig
from tests.netns import tap_netns

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 180


@pytest.fixture(scope="module")
def art():
    a = cached_default()
    assert a.complete, f"kvmvm's default kernel/initramfs are not built: run `kvmvm image build` (KVMVM_HOME={a.home})"
    return a


class Console:
    """A guest console: a pipe for input, a file for output."""

    def __init__(self, path: Path):
        self.path = path
        self.out = open(path, "wb")
        self.rd, self.wr = os.pipe()

    def send(self, line: str) -> None:
        os.write(self.wr, (line + "\n").encode())

    def expect(self, pattern: str, timeout: float = TIMEOUT, after: int = 0) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            text = self.path.read_text(errors="replace")
            m = re.compile(pattern, re.M).search(text, after)
            if m:
                return m
            assert time.monotonic() < deadline, f"{pattern!r} not seen; console:\n{text[-3000:]}"
            time.sleep(0.1)

    def size(self) -> int:
        return self.path.stat().st_size

    def close(self) -> None:
        for fd in (self.rd, self.wr):
            try:
                os.close(fd)
            except OSError:
                pass
        self.out.close()


def linux_config(art, con: Console, **kw) -> MachineConfig:
    return MachineConfig(kernel=str(art.vmlinux), initrd=str(art.initramfs),
                         cmdline=DEFAULT_LINUX_CMDLINE + " kvmvm.console=pipe",
                         serial_out_fd=con.out.fileno(), serial_in_fd=con.rd, **kw)


def end(m: Machine) -> None:
    m.stop()
    m.wait(10)
    m.close()


def at_shell(con: Console, tag: str, timeout: float = TIMEOUT) -> None:
    """Wait until the guest's shell answers: the probe is repeated, since a line sent while
    the guest's init is still starting its shell may be echoed by the tty and never read."""
    deadline = time.monotonic() + timeout
    while True:
        con.send(f"echo {tag}-$((40+2))")
        try:
            con.expect(rf"^{tag}-42", timeout=5)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


@pytest.fixture(scope="module")
def shell_snapshot(art, tmp_path_factory) -> Path:
    """A snapshot of a Linux guest sitting at its shell."""
    d = tmp_path_factory.mktemp("linux-snap")
    con = Console(d / "boot.out")
    m = Machine(linux_config(art, con))
    m.start()
    try:
        at_shell(con, "booted")
        con.send("echo before-snapshot > /tmp/mark")
        con.send("echo marked")
        con.expect(r"^marked")
        m.pause()
        m.snapshot(str(d / "snap"))
    finally:
        end(m)
        con.close()
    return d / "snap"


def test_restore_at_the_shell_and_run_commands(shell_snapshot, tmp_path):
    con = Console(tmp_path / "restored.out")
    m = Machine.restore(str(shell_snapshot), serial_out_fd=con.out.fileno(), serial_in_fd=con.rd)
    try:
        con.send("cat /tmp/mark; echo sum-$((2+3)); uname -s")
        con.expect(r"^before-snapshot")
        con.expect(r"^sum-5")
        con.expect(r"^Linux")
        # the guest's clock goes on, and devices work: read from the virtio-rng
        con.send("head -c 8 /dev/hwrng | od -An -tx1 | tr -d ' '; echo rng-done")
        con.expect(r"^rng-done")
        con.send("exit")
        res = m.wait(60)
        assert res is not None and res.status == 0, res
    finally:
        m.close()
        con.close()


def test_restore_the_same_snapshot_ten_times_at_once(shell_snapshot, tmp_path):
    cons = [Console(tmp_path / f"clone{i}.out") for i in range(10)]
    ms = []
    try:
        for c in cons:
            ms.append(Machine.restore(str(shell_snapshot), serial_out_fd=c.out.fileno(),
                                      serial_in_fd=c.rd))
        for i, c in enumerate(cons):
            c.send(f"echo clone-{i}-$((6*7)) $(cat /tmp/mark)")
        for i, c in enumerate(cons):
            c.expect(rf"^clone-{i}-42 before-snapshot", timeout=TIMEOUT * 2)
    finally:
        for m in ms:
            end(m)
        for c in cons:
            c.close()


def random_hex(con: Console, tag: str) -> str:
    start = con.size()
    con.send(f"echo {tag}-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n')")
    return con.expect(rf"^{tag}-([0-9a-f]{{32}})\r?$", after=start).group(1)


def test_fork_children_get_different_random_numbers(art, tmp_path):
    con = Console(tmp_path / "parent.out")
    m = Machine(linux_config(art, con))
    kids, kcons = [], []
    m.start()
    try:
        at_shell(con, "parent")
        kcons = [Console(tmp_path / f"child{i}.out") for i in range(2)]
        kids = m.fork(2, serial_out_fds=[c.out.fileno() for c in kcons],
                      serial_in_fds=[c.rd for c in kcons])
        vals = [random_hex(c, f"rnd{i}") for i, c in enumerate(kcons)]
        vals.append(random_hex(con, "rndp"))
        assert len(set(vals)) == 3, f"the copies share their RNG state: {vals}"
        # each child is its own machine: a file made in one is not in the other
        kcons[0].send("echo only-in-child0 > /tmp/f; echo made")
        kcons[0].expect(r"^made")
        kcons[1].send("cat /tmp/f 2>/dev/null || echo absent-in-child1")
        kcons[1].expect(r"^absent-in-child1")
    finally:
        for k in kids:
            end(k)
        end(m)
        for c in kcons + [con]:
            c.close()


NET_SCRIPT = r'''
import os, sys, time, re
sys.path.insert(0, sys.argv[1])
from kvmvm.machine import Machine, MachineConfig
from kvmvm.cli.booting import DEFAULT_LINUX_CMDLINE
kernel, initrd, disk, d = sys.argv[2:6]
def console(name):
    out = open(os.path.join(d, name), "wb"); rd, wr = os.pipe(); return out, rd, wr
def expect(name, pat, t=240):
    end = time.monotonic() + t
    while time.monotonic() < end:
        if re.search(pat, open(os.path.join(d, name), errors="replace").read(), re.M):
            return
        time.sleep(0.1)
    sys.exit(f"{pat!r} not seen in {name}:\n" + open(os.path.join(d, name), errors="replace").read()[-3000:])
out, rd, wr = console("net.out")
m = Machine(MachineConfig(kernel=kernel, initrd=initrd, cmdline=DEFAULT_LINUX_CMDLINE + " kvmvm.console=pipe",
                          drives=[disk], nets=["tap=ktap0"], serial_out_fd=out.fileno(), serial_in_fd=rd))
m.start()
os.write(wr, b"ip addr add 10.77.0.2/24 dev eth0; ip link set eth0 up; mount /dev/vda /mnt; echo up-ok\n")
expect("net.out", r"^up-ok")
# both devices busy when the snapshot is taken: a ping stream and a disk writer
os.write(wr, b"ping -i 0.2 -c 50 10.77.0.1 > /tmp/ping.log 2>&1 &\n")
os.write(wr, b"(i=0; while [ $i -lt 400 ]; do echo line-$i >> /mnt/log; sync; i=$((i+1)); done; echo writer-done) &\n")
os.write(wr, b"sleep 2; echo busy\n")
expect("net.out", r"^busy")
m.pause(); m.snapshot(os.path.join(d, "snap")); m.stop(); m.wait(10); m.close()
out2, rd2, wr2 = console("restored.out")
r = Machine.restore(os.path.join(d, "snap"), serial_out_fd=out2.fileno(), serial_in_fd=rd2)
os.write(wr2, b"wait; tail -n 1 /mnt/log; ping -c 3 -W 5 10.77.0.1 > /dev/null && echo ping-after-ok; umount /mnt; echo all-done\n")
expect("restored.out", r"^all-done", 400)
text = open(os.path.join(d, "restored.out"), errors="replace").read()
print(text[-2000:])
r.stop(); r.wait(10); r.close()
'''


def test_snapshot_with_blk_and_net_active(art, tmp_path):
    disk = tmp_path / "disk.ext4"
    with open(disk, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(disk)], check=True)
    with tap_netns("ktap0", "ksnap") as ns:
        script = tmp_path / "net_snapshot.py"
        script.write_text(NET_SCRIPT)
        p = subprocess.run([*ns, sys.executable, str(script), str(ROOT), str(art.vmlinux),
                            str(art.initramfs), str(disk), str(tmp_path)],
                           capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        assert "line-399" in p.stdout, p.stdout[-2000:]
        assert "ping-after-ok" in p.stdout, p.stdout[-2000:]
    log = subprocess.run(["debugfs", "-R", "cat /log", str(disk)], capture_output=True, text=True).stdout
    assert log.splitlines() == [f"line-{i}" for i in range(400)], log[-500:]
