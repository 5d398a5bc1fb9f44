"""kvmvm.Sandbox from the outside (linux tier): the `kvmvm sandbox` CLI against a real VM
(create, ls, exec with status, --json, -i and --timeout 124, cp both ways, the one-line
errors, rm), and running processes kept across pause/resume. The 50-thread test is
test_sandbox_load.py; network=True in test_sandbox_net.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from kvmvm.procfs import children_map, ended
from kvmvm.sandbox import Sandbox
from tests.linux.sandboxfixtures import PROCS, _build_busybox, image, private_snapshots, warm  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def _children() -> set[int]:
    """Processes whose parent is this one."""
    return set(children_map().get(os.getpid(), []))


def _resources() -> dict:
    from kvmvm.sandbox.sandbox import _run_root

    run_root = _run_root()
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return {"fds": fds, "tasks": len(os.listdir("/proc/self/task")),
            "threads": sorted(t.name for t in threading.enumerate()),
            "children": _children(),
            "rundirs": sorted(p.name for p in run_root.iterdir()) if run_root.is_dir() else [],
            "tmp": sorted(os.listdir(tempfile.gettempdir()))}


def _settled(before: dict, timeout: float = 30.0) -> dict:
    """The resources once teardown (finalizers, reaped helpers, joined threads) settled."""
    import gc

    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        now = _resources()
        leaked = {"fds": {k: v for k, v in now["fds"].items() if before["fds"].get(k) != v},
                  "tasks": now["tasks"] - before["tasks"],
                  "threads": [t for t in now["threads"] if t not in before["threads"]],
                  "children": now["children"] - before["children"],
                  "rundirs": [d for d in now["rundirs"] if d not in before["rundirs"] and not d.startswith(".")],
                  "tmp": [t for t in now["tmp"] if t not in before["tmp"]]}
        if not any(leaked.values()) or time.monotonic() > deadline:
            return leaked
        time.sleep(0.2)


KVMVM = [sys.executable, "-m", "kvmvm"]


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (the test host's init may not reap orphans)."""
    return ended(pid)


def test_cli_against_a_real_vm(tmp_path):
    """kvmvm sandbox create|ls|exec|cp|rm on a real VM, and a SIGKILLed sandbox process
    reclaimed by the next call. The CLI gets a private KVMVM_HOME (its image store; the
    guest kernel and initramfs caches linked from the real one)."""
    from kvmvm.image.cache import kvmvm_home
    from kvmvm.images.store import ImageStore

    home = tmp_path / "home"
    home.mkdir()
    for entry in kvmvm_home().iterdir():
        if entry.name not in ("images", "sandbox-snapshots", "sandbox-vms", "volumes", "run"):
            (home / entry.name).symlink_to(entry)
    name = "kvmvm-sandbox-cli-test:1"
    store = ImageStore(root=home / "images", rootfs_type="ext4")
    store.import_(f"oci:{_build_busybox(tmp_path / 'build')}:1", name=name)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "xdg"), KVMVM_HOME=str(home))
    (tmp_path / "xdg").mkdir()
    state = tmp_path / "xdg" / "kvmvm" / "sandboxes"

    def kv(*args, input=None, timeout=150):
        return subprocess.run([*KVMVM, "sandbox", *args], capture_output=True, text=True, env=env,
                              input=input, timeout=timeout)

    try:
        r = kv("create", name, "--memory", "256", "--cold", "--json", "-e", "A=1")
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        sid, pid = info["sandbox_id"], info["pid"]
        assert not info["warm"] and (state / sid / "sock").exists()
        assert [x["sandbox_id"] for x in json.loads(kv("ls", "--json").stdout)] == [sid]

        r = kv("exec", sid, "--", "sh", "-c", "echo $A; echo err >&2; exit 3")
        assert (r.returncode, r.stdout, r.stderr) == (3, "1\n", "err\n")
        r = kv("exec", "--json", "-e", "B=2", sid, "echo $A$B; hostname")
        assert json.loads(r.stdout)["stdout"] == f"12\n{sid}\n" and r.returncode == 0
        assert kv("exec", "-i", sid, "wc -c", input="x" * 1000).stdout.strip() == "1000"
        assert kv("exec", "--timeout", "1", sid, "sleep 60").returncode == 124

        src = tmp_path / "in.bin"
        src.write_bytes(os.urandom(100_000))
        assert kv("cp", str(src), f"{sid}:/root/in.bin").returncode == 0
        assert kv("cp", f"{sid}:/root/in.bin", str(tmp_path / "back.bin")).returncode == 0
        assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
        entries = json.loads(kv("ls", "--json", f"{sid}:/root").stdout)
        assert [(e["name"], e["size"]) for e in entries] == [("in.bin", 100_000)]

        r = kv("exec", "sb-000000000000", "true")
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        r = kv("create", "no-such-image:1")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr

        assert kv("rm", sid).returncode == 0
        assert not (state / sid).exists()
        assert _gone(pid)
        assert kv("exec", sid, "true").returncode == 1

        # a sandbox process killed outright: its VM died with it; the next call reclaims it
        r = kv("create", name, "--memory", "256", "--cold", "--json")
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        os.kill(info["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not _gone(info["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(kv("ls", "--json").stdout) == []
        assert not (state / info["sandbox_id"]).exists()
    finally:
        kv("rm", "--all")


def test_pause_resume_keeps_running_processes(warm, tmp_path):
    """A process started before pause() runs on after resume(). (Failed once: the test paused
    before the guest had started it; it now waits for the pid.)"""
    from kvmvm.errors import SandboxClosed

    sb = Sandbox.create(warm, memory_mib=256)
    h = sb.commands.run("sleep 1000", background=True)
    assert h.pid > 1
    snap = sb.pause(str(tmp_path / "snap"))
    with pytest.raises(SandboxClosed):
        sb.commands.run("true")
    sb2 = Sandbox.resume(snap)
    try:
        assert sb2.commands.run(PROCS + " | grep -c '^sleep 1000'", timeout=60).stdout == "1\n"
    finally:
        sb2.kill()
