"""PENDING (not collected; rename to test_sandbox_more.py once each has passed in the L1 test
host): kvmvm.Sandbox under load and abuse (linux tier). Status from the runs of 2026-12-02:
- 50 threads creating, using and dropping sandboxes leave nothing behind: ran past the
  420 s per-test limit in an L1 shared with a second L1 (36 of 50 done); needs a quieter
  test host or a longer limit for this one test.
- network=True through passt: passt could not create its user namespace in the L1 test
  host while tests ran chrooted there; since stop 17 they do not (tests/kvmhost/init.sh
  moves the host tree onto /), but this test has not run since.
- pause/resume keeps running processes: failed once (the test paused before the guest had
  started the process); it now waits for the pid; not yet run again.
- the CLI against a real VM: create, ls, exec (status, --json, -i, --timeout 124), cp both
  ways, ls of a directory, the one-line errors and rm passed in one run, which then found
  the rm'd sandbox's process alive for a moment (it removes its directory just before it
  exits; `kvmvm sandbox rm` now waits for the process too). The next run ran out of its
  420 s (two cold boots in a loaded L1) with the cause hidden by the timeout in cleanup.
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
import uuid
from pathlib import Path

import pytest

from kvmvm.sandbox import Sandbox
from tests.linux.sandboxfixtures import PROCS, _build_busybox, image, private_snapshots, warm  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def _children() -> set[int]:
    """Processes whose parent is this one."""
    me, out = os.getpid(), set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == me:
                out.add(int(d))
    return out


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


@pytest.mark.timeout(900)
def test_fifty_threads_create_use_and_drop_sandboxes_leaving_nothing(warm):
    """50 threads, each with its own sandbox: run, write, read, a background command left
    running, then kill(), the with-block, or only dropping it (garbage collection). In the
    emulated L1 at most 10 VMs run at once (a gate); every create, command and teardown
    happens concurrently with the others."""
    Sandbox.create(warm, memory_mib=256).kill()       # the pool and caches warmed before counting
    before = _resources()
    gate = threading.Semaphore(10)
    errors, warm_flags, ids = [], [], []
    lock = threading.Lock()

    def work(i: int) -> None:
        try:
            with gate:
                sb = Sandbox.create(warm, memory_mib=256, timeout=600)
                with lock:
                    warm_flags.append((sb.warm, sb.warm_error))
                    ids.append(sb.sandbox_id)
                r = sb.commands.run(f"echo {i}; hostname", timeout=120)
                assert r.stdout == f"{i}\n{sb.sandbox_id}\n", r.stdout
                sb.files.write(f"/tmp/f{i}", f"data {i}")
                assert sb.files.read(f"/tmp/f{i}") == f"data {i}"
                sb.commands.run("sleep 600", background=True)     # teardown must end it
                if i % 3 == 0:
                    sb.kill()
                elif i % 3 == 1:
                    with sb:
                        pass
                else:
                    del sb          # dropped: the finalizer tears it down
        except Exception as e:      # noqa: BLE001 - collected, asserted below
            errors.append(f"thread {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(i,), name=f"worker-{i}") for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(400)
    assert not [t.name for t in threads if t.is_alive()]
    assert not errors, errors[:5]
    assert len(set(ids)) == 50
    leaked = _settled(before)
    assert not any(leaked.values()), leaked
    assert all(w for w, _ in warm_flags), [e for w, e in warm_flags if not w][:3]


NET_CHILD = r"""
import json, socket, sys, threading
sys.path.insert(0, {root!r})
from pathlib import Path
from kvmvm.sandbox import vm as svm
svm.snapshot_root = lambda home=None: Path({snaps!r})
from kvmvm.images.store import ImageStore
from kvmvm.sandbox import Sandbox
img = ImageStore(root={store!r}, rootfs_type="ext4").resolve({digest!r})
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
got = []
def serve():
    c, _ = srv.accept()
    got.append(c.recv(100).decode())
    c.sendall(b"pong\n")
    c.close()
threading.Thread(target=serve, daemon=True).start()
sb = Sandbox.create(img, memory_mib=256, network=True)
out = {{"warm": sb.warm}}
out["addr"] = sb.commands.run("ip addr", check=False, timeout=60).stdout
r = sb.commands.run("echo hello | nc 10.0.2.2 %d" % srv.getsockname()[1], check=False, timeout=60)
out["reply"], out["nc_err"], out["got"] = r.stdout, r.stderr, got
sb.kill()
print(json.dumps(out), flush=True)
"""


def _passt_in(ns_ino: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().startswith("passt") and os.stat(d / "ns" / "net").st_ino == ns_ino:
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def test_network_true_reaches_the_host_through_passt(warm, private_snapshots):
    """network=True: passt in a network namespace made here (a TAP as its "outside", with a
    default route), the guest's address by DHCP, a TCP exchange with a server on the
    namespace's loopback (passt maps the gateway to it); passt ends with the sandbox."""
    ns = f"kvmvm-sb-{uuid.uuid4().hex[:6]}"
    ip = ["ip", "-n", ns]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"], ["tuntap", "add", "dev", "t0", "mode", "tap"],
                    ["addr", "add", "10.0.2.15/24", "dev", "t0"], ["link", "set", "t0", "up"],
                    ["route", "add", "default", "via", "10.0.2.2"]):
            subprocess.run(ip + cmd, check=True, capture_output=True)
        code = NET_CHILD.format(root=str(ROOT), snaps=str(private_snapshots), store=str(warm.store.root),
                                digest=warm.digest)
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True,
                           text=True, timeout=300, env=dict(os.environ))
        assert p.returncode == 0, p.stderr[-3000:]
        out = json.loads(p.stdout.strip().splitlines()[-1])
        assert not out["warm"]                         # network sandboxes always boot cold
        assert "inet 10.0.2.15/" in out["addr"], out
        assert out["got"] == ["hello\n"] and out["reply"] == "pong\n", out
        ino = os.stat(f"/run/netns/{ns}").st_ino
        assert _passt_in(ino) == []
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


KVMVM = [sys.executable, "-m", "kvmvm"]


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (the test host's init may not reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


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
