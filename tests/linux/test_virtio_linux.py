"""virtio devices under a real Linux guest (linux tier: standard KVM only).

blk: an ext4 image written by the guest is on the host disk after the VM ends; a read-only
drive refuses writes. net: ping and TCP through a TAP in a network namespace the test
creates. vsock: echo in both directions over Firecracker-style host Unix sockets. rng:
/dev/hwrng gives bytes. ACPI: devices are found with no virtio_mmio.device= on the cmdline.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kvmvm.image import cached_default
from tests.kvmhost.cpio import Cpio
from tests.netns import tap_netns

ROOT = Path(__file__).resolve().parents[2]
VSOCK_ECHO = ROOT / "guest-images" / "tools" / "out" / "vsock-echo"
KVMVM = [sys.executable, "-m", "kvmvm"]
# generous inside the emulated test host (~50x slower than hardware), tight elsewhere
TIMEOUT = 240 if os.environ.get("KVMHOST_INSIDE") == "1" else 60


@pytest.fixture(scope="module")
def art():
    a = cached_default()
    assert a.complete, f"kvmvm's default kernel/initramfs are not built: run `kvmvm kernel build` (KVMVM_HOME={a.home})"
    return a


@pytest.fixture(scope="module")
def initrd(art, tmp_path_factory) -> Path:
    """The default initramfs plus vsock-echo (a second, concatenated cpio archive)."""
    assert VSOCK_ECHO.is_file(), "guest-images/tools not built: make -C guest-images/tools"
    extra = Cpio()
    extra.dir("usr")
    extra.dir("usr/bin")
    extra.copy("usr/bin/vsock-echo", VSOCK_ECHO)
    path = tmp_path_factory.mktemp("initrd") / "initramfs-test.cpio.gz"
    path.write_bytes(Path(art.initramfs).read_bytes() + gzip.compress(extra.to_bytes()))
    return path


def boot(script: str, *args: str, prefix=(), timeout: float = TIMEOUT, popen=False):
    cmd = [*prefix, *KVMVM, "boot", "--timeout", str(timeout - 20), *args]
    if popen:
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace")
    p = subprocess.run(cmd, input=script, capture_output=True, text=True, errors="replace",
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def lines_of(out: str) -> list[str]:
    """The console's lines, stripped: markers are compared as whole lines (the console also
    echoes each piped command, so a marker must be computed, e.g. $((1+1)), never literal)."""
    return [l.strip() for l in out.splitlines()]


def debugfs_cat(img: Path, path: str) -> str:
    p = subprocess.run(["debugfs", "-R", f"cat {path}", str(img)], capture_output=True, text=True)
    return p.stdout


@pytest.fixture
def ext4(tmp_path) -> Path:
    img = tmp_path / "disk.ext4"
    with open(img, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    return img


def test_blk_write_sync_lands_on_host(art, ext4):
    rc, out, err = boot("mount /dev/vda /mnt && echo kvmvm-data-$((40+2)) > /mnt/f && sync && umount /mnt && echo done-$((2+3))\n",
                        "--drive", str(ext4))
    assert rc == 0, f"{err}\n{out[-3000:]}"
    assert "done-5" in lines_of(out), out[-3000:]
    assert debugfs_cat(ext4, "/f").strip() == "kvmvm-data-42"


def test_blk_read_only_refuses_writes(art, ext4):
    before = ext4.read_bytes()
    rc, out, err = boot("echo ro=$(cat /sys/block/vda/ro)\n"
                        "dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct && echo WROTE || echo write-refused\n"
                        "mount /dev/vda /mnt && ls /mnt && echo mounted-$((1+1))\n",
                        "--drive", f"{ext4},ro")
    assert rc == 0, err
    lines = lines_of(out)
    assert "ro=1" in lines, out[-3000:]          # the guest sees a read-only disk
    assert "write-refused" in lines and "WROTE" not in lines
    assert "mounted-2" in lines and "lost+found" in lines
    assert ext4.read_bytes() == before


def test_hwrng_gives_bytes(art):
    rc, out, err = boot("cat /sys/class/misc/hw_random/rng_current\n"
                        "dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \\n'; echo\n")
    assert rc == 0, err
    assert "virtio_rng" in out
    hexes = [l.strip() for l in out.splitlines() if len(l.strip()) == 64]
    assert hexes and len(set(hexes[0])) > 4


def test_devices_found_from_acpi_without_cmdline(art, ext4):
    # (auto does the same for Linux with ACPI; spelled out here)
    rc, out, err = boot("cat /proc/cmdline\nls /sys/bus/virtio/devices\ncat /sys/block/vda/size\n",
                        "--drive", str(ext4), "--virtio-cmdline", "off")
    assert rc == 0, err
    assert "virtio_mmio.device" not in out
    assert "virtio0" in out and "virtio1" in out
    assert str((32 << 20) // 512) in out


@pytest.fixture
def netns():
    with tap_netns("ktap0") as ns:
        yield ns


def test_net_ping_and_tcp_through_tap(art, netns):
    ns = netns
    server = subprocess.Popen([*ns, sys.executable, "-c", (
        "import socket\n"
        "s = socket.create_server(('10.77.0.1', 7777)); s.settimeout(200)\n"
        "c, _ = s.accept(); c.settimeout(30); d = c.recv(100)\n"
        "c.sendall(b'host-got:' + d); c.close(); print(d.decode().strip())\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        rc, out, err = boot("ip addr add 10.77.0.2/24 dev eth0\nip link set eth0 up\n"
                            "ping -c 3 -W 5 10.77.0.1 && echo ping-$((1+1))\n"
                            "echo guest-hello | nc 10.77.0.1 7777\n",
                            "--net", "tap=ktap0", prefix=ns)
        server_out, _ = server.communicate(timeout=60)
    finally:
        server.kill()
    assert rc == 0, f"{err}\n{out[-3000:]}"
    lines = lines_of(out)
    assert "ping-2" in lines, out[-3000:]
    # ping itself: all three echo requests answered
    assert re.search(r"^3 packets transmitted, 3 packets received, 0% packet loss$", "\n".join(lines), re.M), out[-3000:]
    assert "host-got:guest-hello" in out
    assert server_out.strip() == "guest-hello"
    # the tap is still the test's (kvmvm attached to it; the namespace removal deletes it)
    assert subprocess.run([*ns, "ip", "link", "show", "ktap0"], capture_output=True).returncode == 0


def test_vsock_echo_both_ways(art, initrd, tmp_path):
    uds = tmp_path / "v.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"{uds}_6000")          # guest-initiated connections to port 6000 land here
    listener.listen(1)
    listener.settimeout(200)
    got = {}

    def host_side_server():
        c, _ = listener.accept()
        got["from_guest"] = c.recv(100).decode()
        c.sendall(b"HOST-" + got["from_guest"].encode())
        c.close()

    def host_connects():
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(uds))
                s.sendall(b"CONNECT 5000\n")
                line = b""
                while not line.endswith(b"\n"):
                    ch = s.recv(1)
                    if not ch:
                        break
                    line += ch
                if not line.startswith(b"OK "):
                    s.close()
                    time.sleep(0.5)
                    continue
                s.sendall(b"ping-from-host")
                s.settimeout(30)
                got["echo"] = s.recv(100).decode()
                s.close()
                return
            except OSError:
                time.sleep(0.5)

    t1 = threading.Thread(target=host_side_server, daemon=True)
    t1.start()
    script = ("vsock-echo listen 5000 &\n"
              "sleep 1\n"
              "vsock-echo connect 2 6000 guest-msg\n"
              "wait\n")
    p = boot("", "--initrd", str(initrd), "--vsock", f"cid=3,uds={uds}", popen=True)
    t2 = threading.Thread(target=host_connects, daemon=True)
    t2.start()
    p.stdin.write(script)
    p.stdin.close()
    out = p.stdout.read()
    err = p.stderr.read()
    rc = p.wait(timeout=TIMEOUT)
    t1.join(5)
    t2.join(5)
    listener.close()
    assert rc == 0, f"{err}\n{out[-3000:]}"
    assert got.get("echo") == "ping-from-host", out[-3000:]
    assert got.get("from_guest") == "guest-msg"
    assert "vsock-echo: reply: HOST-guest-msg" in out
    assert not os.path.exists(uds), "kvmvm must remove its vsock socket when the VM ends"
