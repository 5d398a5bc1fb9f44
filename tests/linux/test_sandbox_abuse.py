"""kvmvm.Sandbox against an abusive guest and the end of its owner (linux tier): a fork bomb,
a memory hog, a full disk and a spinning CPU stay inside the sandbox's limits while a
neighbour keeps answering; interpreter exit and SIGKILL of the owning process leave nothing
behind. Shares the image and warm snapshot of tests/linux/sandboxfixtures.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmvm.errors import CommandTimeout
from kvmvm.sandbox import Sandbox
from tests.linux.sandboxfixtures import image, private_snapshots, warm  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]


def test_hostile_guest_stays_inside_its_limits(warm):
    """Fork bomb, memory hog, full disk and spinning CPU in one sandbox: each ends with a
    clear result, the sandbox still answers, and so does a neighbour."""
    nb = Sandbox.create(warm, memory_mib=256, timeout=900)
    sb = Sandbox.create(warm, memory_mib=256, pids=64, timeout=900)
    dirs = [nb.vm.rundir.path, sb.vm.rundir.path]

    def both_answer():
        assert nb.commands.run("echo neighbour", timeout=60).stdout == "neighbour\n"
        assert sb.commands.run("echo alive", timeout=60).stdout == "alive\n"

    try:
        count = "ls -d /proc/[0-9]* | wc -l"       # kernel threads included
        base = int(sb.commands.run(count, timeout=60).stdout)
        # a fork bomb meets the pids limit; the command's timeout kills its whole group (the
        # bomb's processes outlive their parents: `sleep` keeps the command itself running)
        t0 = time.monotonic()
        with pytest.raises(CommandTimeout):
            sb.commands.run("b() { b | b & }; b; sleep 1000", timeout=20)
        assert time.monotonic() - t0 < 90
        both_answer()
        left = int(sb.commands.run(count, timeout=60).stdout)
        assert left <= base + 4, f"{left} tasks after the fork bomb was killed, {base} before"

        # all memory: the guest's OOM killer ends the hog (or its allocation fails)
        r = sb.commands.run("cat /dev/zero | tail", check=False, timeout=180)
        assert r.exit_code != 0, r
        both_answer()

        # a full disk: the writable layer (a tmpfs in the guest's memory) says so
        r = sb.commands.run("dd if=/dev/zero of=/root/fill bs=1M", check=False, timeout=180)
        assert r.exit_code != 0 and "No space left on device" in r.stderr, r
        sb.commands.run("rm /root/fill", timeout=60)
        both_answer()

        # every vCPU spinning: the agent and the neighbour still answer
        spin = sb.commands.run("while :; do :; done", background=True)
        time.sleep(2)
        both_answer()
        assert spin.kill()
        assert spin.wait(60, check=False).exit_code == 137
    finally:
        nb.kill()
        sb.kill()
    assert not any(Path(d).exists() for d in dirs)


EXIT_CHILD = r"""
import os, sys, time
sys.path.insert(0, {root!r})
from kvmvm.sandbox import vm as svm
from pathlib import Path
svm.snapshot_root = lambda home=None: Path({snaps!r})
from kvmvm.images.store import ImageStore
from kvmvm.sandbox import Sandbox
img = ImageStore(root={store!r}, rootfs_type="ext4").resolve({digest!r})
sb = Sandbox.create(img, memory_mib=256)
print(sb.vm.rundir.path, sb.warm, flush=True)
print(sb.warm_error, file=sys.stderr, flush=True)
if sys.argv[1] == "hang":
    sb.commands.run("sleep 600", timeout=None)
"""


def _line(p: subprocess.Popen, timeout: float) -> str:
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            p.kill()
            raise AssertionError(f"the child said nothing within {timeout:g} s")
    return p.stdout.readline()


def test_process_exit_and_sigkill_leave_nothing(warm, private_snapshots):
    """Interpreter exit tears the sandbox down (atexit); a SIGKILL mid-command leaves a run
    directory that the next start reclaims (the VM died with the process)."""
    from kvmvm.agent.rundir import reclaim
    from kvmvm.sandbox.sandbox import _run_root

    code = EXIT_CHILD.format(root=str(ROOT), snaps=str(private_snapshots), store=str(warm.store.root),
                             digest=warm.digest)
    for mode in ("exit", "hang"):
        p = subprocess.Popen([sys.executable, "-c", code, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        try:
            line = _line(p, 180)
            assert line, f"the child ended without a word (exit {p.wait(30)})"
            rundir, was_warm = line.split()
            assert was_warm == "True", p.stderr.readline()
            if mode == "hang":
                time.sleep(1)
                p.send_signal(signal.SIGKILL)
            assert p.wait(120) in (0, -signal.SIGKILL)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()
        if mode == "exit":
            assert not Path(rundir).exists()
        else:
            assert Path(rundir).exists()            # what a SIGKILL leaves ...
            assert rundir in reclaim(_run_root())   # ... goes with the next start
            assert not Path(rundir).exists()
