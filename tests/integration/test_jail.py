"""`kvmvm boot --jail`: jailed tiny guests, escape attempts that must fail, and nothing left
behind (after a normal end, SIGTERM, and kill -9 of the keeper, reclaimed by the next start).

Escape attempts run as a probe (KVMVM_TEST_HOOKS=1 plus the hidden --jail-probe CODE): the
jailed VM process, with its VM built and every jail step done, runs CODE instead of the VM.
The probes run with --seccomp-level 0 where seccomp would stop them first: these tests are
about the jail alone (tests/integration/test_seccomp.py covers the filters).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import KVMVM, ROOT, TINY_OUT, kvmvm
from tests.integration.test_virtio import netns, packet_socket_in, ETH_P  # noqa: F401

pytestmark = pytest.mark.host


def elf(name: str) -> str:
    return str(TINY_OUT / f"{name}.elf")


@pytest.fixture
def jroot(tmp_path) -> Path:
    return tmp_path / "jails"


def env(jroot: Path, **extra) -> dict:
    return dict(os.environ, KVMVM_JAIL_ROOT=str(jroot), **extra)


def probe(jroot: Path, code: str, *args: str, timeout: float = 60):
    return kvmvm("boot", "--kernel", elf("hello"), "--jail", "--seccomp-level", "0", *args,
                 "--jail-probe", code, env=env(jroot, KVMVM_TEST_HOOKS="1"), timeout=timeout)


def assert_clean(jroot: Path, states: list[dict] = ()) -> None:
    assert not jroot.exists() or os.listdir(jroot) == [], os.listdir(jroot)
    for st in states:
        for cg in st["cgroups"]:
            assert not os.path.exists(cg), f"cgroup left behind: {cg}"
        for s in st["sockets"]:
            assert not os.path.exists(s), f"socket left behind: {s}"


def test_tiny_guest_boots_jailed(kvm_ok, tiny_images, jroot):
    r = kvmvm("boot", "--kernel", elf("exitcode"), "--cmdline", "4", "--jail", env=env(jroot))
    assert (r.status, r.out, r.err) == (9, "exitcode 4\n", "")
    assert_clean(jroot)


def test_kvmvm_jail_runs_an_existing_boot_command(kvm_ok, tiny_images, jroot):
    r = kvmvm("jail", "--", "--kernel", elf("exitcode"), "--cmdline", "3", env=env(jroot))
    assert (r.status, r.out) == (7, "exitcode 3\n"), r.err


def test_blk_and_vsock_jailed(kvm_ok, tiny_images, jroot, tmp_path):
    """blk writes land in the host file; the vsock socket appears where the user asked and
    both directions work (the guest-initiated listener must be writable by the jail's uid,
    as a Unix socket's connect() needs)."""
    rw = tmp_path / "rw.img"
    rw.write_bytes(b"KVMVM-DISK-0".ljust(16, b".") + bytes((1 << 20) - 16))
    r = kvmvm("boot", "--kernel", elf("virtio-blk"), "--drive", f"{rw},id=disk0", "--cmdline",
              "word=flushed", "--timeout", "30", "--jail", env=env(jroot))
    assert r.status == 0, r.out + r.err
    assert "blk0: write+flush+read ok" in r.out
    assert rw.read_bytes()[512:1536] == (b"flushed" * 200)[:1024]

    sdir = tmp_path / "socks"
    sdir.mkdir()
    uds = str(sdir / "v.sock")
    lst = socket.socket(socket.AF_UNIX)
    lst.bind(uds + "_5000")
    os.chmod(uds + "_5000", 0o777)
    lst.listen(1)
    lst.settimeout(30)

    def echo():
        c, _ = lst.accept()
        while b := c.recv(4096):
            c.sendall(b)
        c.close()

    threading.Thread(target=echo, daemon=True).start()
    vm = subprocess.Popen([*KVMVM, "boot", "--kernel", elf("virtio-vsock"), "--vsock",
                           f"cid=7,uds={uds}", "--timeout", "40", "--jail"], cwd=ROOT,
                          env=env(jroot), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(uds):
            assert time.monotonic() < deadline and vm.poll() is None, "no vsock socket appeared"
            time.sleep(0.01)
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        s.connect(uds)
        s.sendall(b"CONNECT 1234\n")
        line = b""
        while not line.endswith(b"\n"):
            line += s.recv(1)
        assert line.startswith(b"OK ")
        payload = os.urandom(100_000)
        threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
        got = bytearray()
        while len(got) < len(payload):
            b = s.recv(65536)
            assert b, "stream closed early"
            got += b
        assert bytes(got) == payload
        s.close()
        out, err = vm.communicate(timeout=40)
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()
        lst.close()
    assert vm.returncode == 0, out + err
    assert "vsock: guest->host echo ok" in out
    assert not os.path.exists(uds), "the jail left the vsock socket behind"
    assert_clean(jroot)


def test_net_jailed_in_the_taps_namespace(kvm_ok, tiny_images, jroot, netns):  # noqa: F811
    s = packet_socket_in(netns, "ktap0")
    s.settimeout(20)
    vm = subprocess.Popen([*KVMVM, "boot", "--kernel", elf("virtio-net"), "--net",
                           "tap=ktap0,mac=52:54:00:aa:bb:01", "--cmdline", "count=1", "--timeout",
                           "40", "--jail", "--jail-netns", f"/var/run/netns/{netns}"],
                          cwd=ROOT, env=env(jroot), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        while True:
            f = s.recv(2048)
            if f[14:25] == b"kvmvm-hello":
                break
        s.send(f[6:12] + b"\x02\x00\x00\x00\x00\x01" + ETH_P.to_bytes(2, "big") +
               b"ping 0".ljust(46, b"\0"))
        out, err = vm.communicate(timeout=40)
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()
        s.close()
    assert vm.returncode == 0, out + err
    assert "virtio-net: ok" in out


# --- escape attempts ---

def test_probe_runs_unprivileged_in_an_almost_empty_root(kvm_ok, tiny_images, jroot):
    r = probe(jroot, "import os, json\n"
                     "print(json.dumps([os.getuid(), os.getgid(), os.getgroups(), os.getpid(),"
                     " sorted(os.listdir('/')), sorted(os.listdir('/dev')), os.uname().nodename,"
                     " sorted(int(f) for f in os.listdir('/proc/self/fd')) if os.path.exists('/proc') else None]))")
    assert r.status == 0, r.out + r.err
    uid, gid, groups, pid, top, dev, host, fds = json.loads(r.out)
    assert (uid, gid, groups) == (990000, 990000, [])
    assert pid == 1     # a PID namespace of its own
    assert top == ["boot", "dev"] and dev == ["kvm", "urandom"]
    assert host == "kvmvm-jail"
    assert fds is None  # no /proc at all


def test_host_files_are_out_of_reach(kvm_ok, tiny_images, jroot):
    code = (
        "import os\n"
        "for p in ('/etc/passwd', '/etc/shadow', '/root', '/proc/1/root/etc/passwd', '/../etc/passwd'):\n"
        "    try:\n"
        "        open(p).read(); print('OPENED', p)\n"
        "    except OSError as e:\n"
        "        print('refused', p, e.errno)\n"
        "for p in ('/boot/kernel',):\n"
        "    try:\n"
        "        open(p, 'r+b'); print('WRITABLE', p)\n"
        "    except OSError as e:\n"
        "        print('read-only', p, e.errno)\n"
        "try:\n"
        "    open('/dev/new', 'w'); print('CREATED')\n"
        "except OSError as e:\n"
        "    print('no new files', e.errno)\n"
        "try:\n"
        "    os.chroot('/boot'); print('CHROOT')\n"
        "except OSError as e:\n"
        "    print('no chroot', e.errno)\n"
    )
    r = probe(jroot, code)
    assert r.status == 0, r.out + r.err
    assert "OPENED" not in r.out and "WRITABLE" not in r.out and "CREATED" not in r.out
    assert "CHROOT" not in r.out
    assert r.out.count("refused") == 5


def test_mknod_and_mount_are_refused(kvm_ok, tiny_images, jroot, tmp_path):
    sdir = tmp_path / "socks"
    sdir.mkdir(mode=0o777)
    os.chmod(sdir, 0o777)   # even where it may write, it cannot make a device node
    code = (
        "import os, ctypes\n"
        "for p in ('/vsock/mem', '/dev/mem2'):\n"
        "    try:\n"
        "        os.mknod(p, 0o600 | 0o020000, os.makedev(1, 1)); print('MKNOD', p)\n"
        "    except OSError as e:\n"
        "        print('no mknod', p, e.errno)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "rc = libc.mount(b'proc', b'/vsock', b'proc', 0, None)\n"
        "print('MOUNTED' if rc == 0 else f'no mount {ctypes.get_errno()}')\n"
    )
    r = probe(jroot, code, "--vsock", f"cid=3,uds={sdir}/v.sock")
    assert r.status == 0, r.out + r.err
    assert "MKNOD" not in r.out and "MOUNTED" not in r.out
    assert r.out.count("no mknod") == 2 and "no mount 1" in r.out    # EPERM


def test_ptrace_and_other_vms_memory_are_out_of_reach(kvm_ok, tiny_images, jroot):
    """Another VM runs on the host; the jailed process can neither see, ptrace, nor read it."""
    other = subprocess.Popen([*KVMVM, "boot", "--kernel", elf("halt"), "--timeout", "60"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "halt: now\n"
        code = (
            "import ctypes, os\n"
            f"pid = {other.pid}\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]\n"
            "for target in (pid, 1):\n"
            "    rc = libc.ptrace(16, target, None, None)\n"      # PTRACE_ATTACH
            "    print('ATTACHED' if rc == 0 else f'no ptrace {target} {ctypes.get_errno()}')\n"
            "try:\n"
            "    os.kill(pid, 0); print('SEES', pid)\n"
            "except OSError as e:\n"
            "    print('no such pid', e.errno)\n"
            "for p in (f'/proc/{pid}/mem', f'/proc/{pid}/maps'):\n"
            "    try:\n"
            "        open(p, 'rb').read(1); print('READ', p)\n"
            "    except OSError as e:\n"
            "        print('no', p, e.errno)\n"
        )
        r = probe(jroot, code)
    finally:
        other.kill()
        other.wait()
    assert r.status == 0, r.out + r.err
    assert "ATTACHED" not in r.out and "SEES" not in r.out and "READ" not in r.out
    assert f"no ptrace {other.pid} 3" in r.out        # ESRCH: not in its PID namespace
    assert "no ptrace 1 1" in r.out                    # EPERM: not even itself as pid 1
    assert "no such pid 3" in r.out


def test_memory_cgroup_limit_stops_a_runaway(kvm_ok, tiny_images, jroot):
    code = (
        "chunks = []\n"
        "for i in range(64):\n"
        "    chunks.append(bytearray(16 << 20))\n"   # touched: zero-filled pages are charged
        "print('ALLOCATED', len(chunks) * 16, 'MiB')\n"
    )
    r = probe(jroot, code, "--memory", "32", "--jail-memory", "160")
    assert "ALLOCATED" not in r.out, r.out
    assert r.status != 0
    assert ("killed by SIGKILL" in r.err and r.status == 137) or "MemoryError" in r.out, (r.status, r.out, r.err)
    assert_clean(jroot)


# --- nothing left behind ---

def _start_jailed_halt(jroot: Path, uds: str):
    p = subprocess.Popen([*KVMVM, "boot", "--kernel", elf("halt"), "--vsock", f"cid=3,uds={uds}",
                          "--jail"], cwd=ROOT, env=env(jroot), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "halt: now\n"
    states = [json.loads(f.read_text()) for f in jroot.glob("*.json")]
    assert len(states) == 1 and states[0]["pid"] == p.pid
    st = states[0]
    assert all(os.path.isdir(c) for c in st["cgroups"]) and os.path.exists(uds)
    return p, st


def test_sigterm_cleans_up(kvm_ok, tiny_images, jroot, tmp_path):
    p, st = _start_jailed_halt(jroot, str(tmp_path / "v.sock"))
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=15)
    assert p.returncode == 130, err
    assert err.strip() == "kvmvm: VM stopped on request"
    assert_clean(jroot, [st])


def test_kill_9_leftovers_are_reclaimed_by_the_next_start(kvm_ok, tiny_images, jroot, tmp_path):
    p, st = _start_jailed_halt(jroot, str(tmp_path / "v.sock"))
    p.kill()
    p.wait()
    time.sleep(0.3)     # the VM process dies with its keeper (PDEATHSIG)
    assert os.path.exists(jroot / f"{st['id']}.json")
    r = kvmvm("boot", "--kernel", elf("hello"), "--jail", env=env(jroot))
    assert r.status == 0, r.err
    assert_clean(jroot, [st])


def test_jail_input_errors_are_one_line(kvm_ok, tiny_images, jroot, tmp_path):
    for args, msg, status in [
        (["--jail-uid", "0"], "--jail-uid must be between", 2),
        (["--jail-netns", str(tmp_path / "none")], "no such network namespace file", 2),
        (["--vsock", f"cid=3,uds={tmp_path}/missing/v.sock"], "vsock socket folder not found", 2),
        (["--jail-probe", "print(1)"], "--jail-probe is a test hook", 2),
    ]:
        r = kvmvm("boot", "--kernel", elf("hello"), "--jail", *args, env=env(jroot))
        assert r.status == status, (args, r.out, r.err)
        assert msg in r.err and len(r.err.strip().splitlines()) == 1, (args, r.err)
    assert_clean(jroot)


def test_new_network_namespace_has_only_loopback(kvm_ok, tiny_images, jroot):
    host = [n for _, n in socket.if_nameindex() if n != "lo"]
    assert host, "this host has no network interface besides lo"
    code = ("import ctypes\n"
            "libc = ctypes.CDLL(None)\n"
            f"print('lo', libc.if_nametoindex(b'lo') > 0)\n"
            f"print('host', [n for n in {host!r} if libc.if_nametoindex(n.encode())])\n")
    r = probe(jroot, code, "--jail-netns", "new")
    assert r.status == 0, r.out + r.err
    assert r.out.splitlines() == ["lo True", "host []"]
    r = probe(jroot, code)      # without --jail-netns: the host's namespace
    assert f"host {host!r}" in r.out
