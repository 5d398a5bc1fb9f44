"""kvmvm.Sandbox against real VMs (linux tier): cold boot and warm snapshot, re-seeded
identity of restored copies, every method, limits, a scratch disk, pause/resume, threads,
teardown.

One busybox image (every applet linked) is imported into a private store; warm snapshots
go to a private directory. Kept to a few sandboxes: each one is a VM in the emulated L1.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from kvmvm.errors import CommandExitError, CommandTimeout, SandboxClosed, SandboxFileNotFound
from kvmvm.sandbox import Sandbox
from tests.linux.sandboxfixtures import PROCS, image, private_snapshots, warm  # noqa: F401 (fixtures)


def _fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def test_restored_sandboxes_get_their_own_identity(warm):
    fds = _fds()
    a = Sandbox.create(warm, memory_mib=256)
    b = Sandbox.create(warm, memory_mib=256)
    try:
        assert a.warm and b.warm, (a.warm_error, b.warm_error)
        read = "hostname; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s"
        ha, ra, ta = a.commands.run(read).stdout.split()
        hb, rb, tb = b.commands.run(read).stdout.split()
        assert (ha, hb) == (a.sandbox_id, b.sandbox_id)
        assert ra != rb and len(ra) == 64
        assert abs(int(ta) - time.time()) < 30 and abs(int(tb) - time.time()) < 30
        dirs = [a.vm.rundir.path, b.vm.rundir.path]
    finally:
        a.kill()
        b.kill()
    assert not any(d.exists() for d in dirs)
    time.sleep(0.2)
    assert _fds() <= fds
    assert not [t for t in threading.enumerate() if t.name.startswith("kvmvm-sb-")]


def test_every_method_in_one_vm(warm):
    with Sandbox.create(warm, memory_mib=256, envs={"A": "1"}) as sb:
        # commands: string, argv, env, cwd, user, stdin
        assert sb.commands.run("echo $A $B", envs={"B": "2"}).stdout == "1 2\n"
        assert sb.commands.run(["sh", "-c", "pwd"], cwd="/tmp").stdout == "/tmp\n"
        assert sb.commands.run("id -u", user="app").stdout == "1000\n"
        assert sb.commands.run("wc -c", stdin=b"x" * 100_000).stdout.strip() == "100000"
        with pytest.raises(CommandExitError) as ei:
            sb.commands.run("echo no >&2; exit 3")
        assert ei.value.exit_code == 3 and ei.value.stderr == "no\n"
        out = []
        sb.commands.run("for i in 1 2 3; do echo $i; sleep 0.1; done", on_stdout=out.append)
        assert "".join(out) == "1\n2\n3\n"
        # a timeout kills the command (and its children), not the sandbox
        with pytest.raises(CommandTimeout):
            sb.commands.run("sleep 60 | cat", timeout=1)
        assert sb.commands.run(PROCS + " | grep -c '^sleep 60'", check=False).stdout == "0\n"
        # a flood of output hits the cap cleanly
        r = sb.commands.run("yes | head -c 200000000", output_limit=1 << 20, check=False, timeout=120)
        assert r.truncated and len(r.stdout_bytes) == 1 << 20 and "output limit" in r.error
        # background
        h = sb.commands.run("read x; echo got $x; sleep 60", background=True)
        h.send_stdin("hi\n")
        assert h.pid > 1
        deadline = time.monotonic() + 30
        while h.stdout != "got hi\n" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert h.stdout == "got hi\n" and h.kill()
        assert h.wait(check=False).exit_code == 137
        # many commands at once from several threads
        res, errs = {}, []

        def work(i):
            try:
                res[i] = sb.commands.run(f"echo {i}").stdout
            except Exception as e:      # noqa: BLE001
                errs.append(e)

        ts = [threading.Thread(target=work, args=(i,)) for i in range(16)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errs and res == {i: f"{i}\n" for i in range(16)}
        # files
        sb.files.write("/app/x.py", b"print('hi')\n")
        assert sb.files.read("/app/x.py") == "print('hi')\n"
        assert [e.name for e in sb.files.list("/app")] == ["x.py"]
        assert sb.files.exists("/app/x.py") and not sb.files.exists("/app/nope")
        assert sb.files.make_dir("/app/d") and not sb.files.make_dir("/app/d")
        sb.files.rename("/app/x.py", "/app/d/y.py")
        assert sb.commands.run("cat /app/d/y.py").stdout == "print('hi')\n"
        sb.files.remove("/app")
        assert not sb.files.exists("/app")
        with pytest.raises(SandboxFileNotFound):
            sb.files.read("/etc/nope")
        big = os.urandom(2 << 20)
        sb.files.write("/tmp/big", big)
        assert sb.files.read("/tmp/big", "bytes") == big
        # lifetime: extended, then short
        sb.set_timeout(600)
        assert 590 < sb.time_left <= 600


def test_limits_pids_and_lifetime(warm):
    sb = Sandbox.create(warm, memory_mib=256, pids=40, timeout=120)
    try:
        r = sb.commands.run("for i in $(seq 100); do sleep 5 & done; wait", check=False, timeout=60)
        assert "fork" in r.stderr.lower() or r.exit_code != 0
        assert sb.commands.run("echo still here", timeout=60).stdout == "still here\n"
        sb.set_timeout(1)
        time.sleep(2)
        assert not sb.is_running()
        with pytest.raises(TimeoutError, match="lifetime"):
            sb.commands.run("true")
    finally:
        sb.kill()


def test_scratch_disk_bounds_the_writable_layer(warm):
    """disk_mib: the first such sandbox boots cold and makes its own warm snapshot, with a
    copy of the scratch disk; a restored one gets its own copy (nothing shared)."""
    c = Sandbox.create(warm, memory_mib=256, disk_mib=48)
    d = None
    try:
        assert not c.warm and c.vm.scratch is not None
        c.files.write("/root/mine", "cold")
        d = Sandbox.create(warm, memory_mib=256, disk_mib=48)
        assert d.warm, d.warm_error
        assert not d.files.exists("/root/mine")
        total_kib = int(d.commands.run("df -k / | tail -n 1", timeout=60).stdout.split()[1])
        assert 30_000 < total_kib <= 48 * 1024, total_kib
        r = d.commands.run("dd if=/dev/zero of=/root/fill bs=1M count=200", check=False, timeout=180)
        assert r.exit_code != 0 and "No space left on device" in r.stderr, r
        st = os.stat(d.vm.scratch)
        assert st.st_size == 48 << 20 and st.st_blocks * 512 <= (48 << 20) + (1 << 20)
        d.commands.run("rm /root/fill", timeout=60)
        assert d.commands.run("echo x > /root/y && cat /root/y", timeout=60).stdout == "x\n"
        assert c.files.read("/root/mine") == "cold"
        scratch = [c.vm.scratch, d.vm.scratch]
    finally:
        c.kill()
        if d is not None:
            d.kill()
    assert not any(Path(p).exists() for p in scratch)


def test_pause_resume_keeps_files_and_identity(warm, tmp_path):
    sb = Sandbox.create(warm, memory_mib=256)
    sb.files.write("/root/state.txt", "kept")
    snap = sb.pause(str(tmp_path / "snap"))
    with pytest.raises(SandboxClosed):
        sb.commands.run("true")
    sb2 = Sandbox.resume(snap)
    try:
        assert sb2.sandbox_id == sb.sandbox_id
        assert sb2.commands.run("cat /root/state.txt; hostname", timeout=60).stdout == f"kept{sb.sandbox_id}\n"
        sb2.files.write("/root/after", "y")
        assert sb2.files.read("/root/after") == "y"
    finally:
        sb2.kill()
