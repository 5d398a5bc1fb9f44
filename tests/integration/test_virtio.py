"""virtio-mmio devices under real VMs on the local /dev/kvm, driven by tiny-guest drivers.

Each test boots `kvmvm boot` as a separate process (so "the VMM stayed alive and exited
normally" is an observable fact: guest RAM sits between PROT_NONE guard pages, so a host
access that escaped the bounds checks would kill the process with SIGSEGV, not exit 0).
Every device test runs twice: with ioeventfd/irqfd and with the plain exit path.
"""
from __future__ import annotations

import ctypes
import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import KVMVM, ROOT, TINY_OUT, kvmvm

pytestmark = pytest.mark.host

PATHS = ["eventfd", "exitpath"]
EVIL_MODES = ["oob", "wrap", "loop", "huge", "ilong", "iloop", "inest", "availidx", "usedring",
              "garbage", "badhead", "unaligned", "qsize0", "qsize3", "qbig", "mmioring", "wafter",
              "inext", "izero", "noftok"]


def env_for(path: str) -> dict:
    env = dict(os.environ)
    env["KVMVM_VIRTIO_EXITPATH"] = "1" if path == "exitpath" else "0"
    return env


def elf(name: str) -> str:
    return str(TINY_OUT / f"{name}.elf")


@pytest.fixture
def image(tmp_path) -> callable:
    def make(name: str, tag: bytes, size: int = 1 << 20) -> Path:
        p = tmp_path / name
        p.write_bytes(tag.ljust(16, b".") + bytes(size - 16))
        return p
    return make


def exited_normally(r) -> None:
    assert r.status >= 0, f"kvmvm died by signal {-r.status}:\n{r.out}\n{r.err}"


@pytest.mark.parametrize("path", PATHS)
def test_rng(tiny_images, kvm_ok, path):
    r = kvmvm("boot", "--kernel", elf("virtio-rng"), "--timeout", "30", env=env_for(path))
    assert r.status == 0, r.out + r.err
    assert "virtio-rng: ok" in r.out


@pytest.mark.parametrize("path", PATHS)
def test_blk_write_flush_and_read_only(tiny_images, kvm_ok, image, path):
    rw, ro = image("rw.img", b"KVMVM-DISK-0"), image("ro.img", b"KVMVM-DISK-1")
    before = ro.read_bytes()
    r = kvmvm("boot", "--kernel", elf("virtio-blk"), "--drive", f"{rw},id=disk0", "--drive",
              f"{ro},ro", "--cmdline", "word=flushed", "--timeout", "30", env=env_for(path))
    assert r.status == 0, r.out + r.err
    assert "blk0: capacity 2048 id 'disk0' ro=0" in r.out
    assert "blk0: sector0 'KVMVM-DISK-0....'" in r.out
    assert "blk0: write+flush+read ok" in r.out
    assert "blk1: write rejected (status 1)" in r.out
    assert "virtio-blk: ok" in r.out
    data = rw.read_bytes()
    assert data[512:1536] == (b"flushed" * 200)[:1024]   # the guest's flushed write is in the file
    assert data[1536:2048] == bytes(512)
    assert ro.read_bytes() == before


def test_drive_specs_are_checked(tiny_images, tmp_path):
    for args, msg in [
        (["--drive", str(tmp_path / "missing.img")], "image not found"),
        (["--drive", f"{tmp_path},ro"], "not a regular file"),
        (["--drive", "x.img,bogus"], "unknown option"),
        (["--net", "mac=52:54:00:00:00:01"], "no TAP name"),
        (["--net", "tap=t0,mac=zz"], "mac must look like"),
        (["--vsock", "cid=2,uds=/tmp/x.sock"], "cid must be between"),
        (["--vsock", "uds=/tmp/x.sock"], "need cid=N,uds=PATH"),
    ]:
        if args[0] == "--drive" and "x.img" in args[1]:
            (tmp_path / "x.img").write_bytes(bytes(4096))
            args = ["--drive", f"{tmp_path / 'x.img'},bogus"]
        r = kvmvm("boot", "--kernel", elf("hello"), *args)
        assert r.status == 2, (args, r.out, r.err)
        assert msg in r.err and len(r.err.strip().splitlines()) == 1, (args, r.err)


@pytest.mark.parametrize("path", PATHS)
def test_vsock_echo_both_directions(tiny_images, kvm_ok, tmp_path, path):
    uds = str(tmp_path / "v.sock")
    lst = socket.socket(socket.AF_UNIX)
    lst.bind(uds + "_5000")
    lst.listen(1)
    lst.settimeout(30)

    def echo():     # the host service a guest-initiated stream reaches
        c, _ = lst.accept()
        while b := c.recv(4096):
            c.sendall(b)
        c.close()

    threading.Thread(target=echo, daemon=True).start()
    vm = subprocess.Popen([*KVMVM, "boot", "--kernel", elf("virtio-vsock"), "--vsock",
                           f"cid=7,uds={uds}", "--timeout", "40"], cwd=ROOT, env=env_for(path),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
        payload = os.urandom(300_000)   # more than the guest's 64 KiB credit: flow control
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
    assert f"vsock: host->guest echoed {len(payload)} bytes" in out
    assert not os.path.exists(uds), "kvmvm left its vsock socket behind"


# --- net: a TAP in a network namespace of the test's own ---

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
ETH_P = 0x88B5


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns():
    name = f"kvmvm-t{os.getpid()}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "tuntap", "add", "dev", "ktap0", "mode", "tap", "vnet_hdr")
        _ip("-n", name, "link", "set", "ktap0", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def packet_socket_in(ns: str, ifname: str) -> socket.socket:
    """An AF_PACKET socket on ifname inside netns ns (setns in a throw-away thread)."""
    out = {}

    def work():
        fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                out["err"] = ctypes.get_errno()
                return
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P))
            s.bind((ifname, ETH_P))
            out["sock"] = s
        finally:
            os.close(fd)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert "sock" in out, f"setns failed: {out.get('err')}"
    return out["sock"]


@pytest.mark.parametrize("path", PATHS)
def test_net_frames_through_tap(tiny_images, kvm_ok, netns, path):
    s = packet_socket_in(netns, "ktap0")
    s.settimeout(20)
    vm = subprocess.Popen(["ip", "netns", "exec", netns, *KVMVM, "boot", "--kernel",
                           elf("virtio-net"), "--net", "tap=ktap0,mac=52:54:00:aa:bb:01",
                           "--cmdline", "count=3", "--timeout", "40"],
                          cwd=ROOT, env=env_for(path), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        while True:     # the guest's broadcast hello tells us it is up
            f = s.recv(2048)
            if f[14:25] == b"kvmvm-hello":
                break
        guest_mac = f[6:12]
        assert guest_mac == bytes.fromhex("525400aabb01")
        for i in range(3):
            s.send(guest_mac + b"\x02\x00\x00\x00\x00\x01" + struct.pack(">H", ETH_P) +
                   f"ping {i}".encode().ljust(46, b"\0"))
            while True:
                f = s.recv(2048)
                if f[14:18] == b"pong":
                    break
            assert f[14:20] == f"pong {i}".encode()
        out, err = vm.communicate(timeout=40)
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()
        s.close()
    assert vm.returncode == 0, out + err
    assert "virtio-net: ok" in out


def test_net_tap_created_by_kvmvm_is_removed(tiny_images, kvm_ok, netns):
    # a TAP that does not exist yet is created by kvmvm and must vanish with the VM
    r = subprocess.run(["ip", "netns", "exec", netns, *KVMVM, "boot", "--kernel", elf("hello"),
                        "--net", "tap=kvmvm-new0"], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    links = subprocess.run(["ip", "-n", netns, "link"], capture_output=True, text=True).stdout
    assert "kvmvm-new0" not in links


# --- adversarial guests ---

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", EVIL_MODES)
def test_adversarial_guest(tiny_images, kvm_ok, image, mode, path):
    disk = image("other.img", b"KVMVM-DISK-0")
    r = kvmvm("boot", "--kernel", elf("virtio-evil"), "--drive", f"{disk},ro", "--cmdline",
              f"mode={mode}", "--timeout", "30", env=env_for(path))
    exited_normally(r)
    assert r.status == 0, r.out + r.err
    assert f"evil {mode}: status" in r.out and "needs_reset=1" in r.out, r.out
    assert "evil: other device ok" in r.out
    assert "evil: recovered after reset" in r.out
