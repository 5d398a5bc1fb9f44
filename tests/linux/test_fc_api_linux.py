"""kvmvm's Linux kernel booted purely through Firecracker's API, as Firecracker's
getting-started guide does: boot source, machine config, a root drive (an ext4 image the
kernel mounts as / with no initramfs), a network interface on a TAP in a network namespace
the test creates, InstanceStart; then a second drive's backing file is swapped with
PATCH /drives while the guest runs, and the guest sees the new capacity and contents.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmvm.image import cached_default
from tests.fcclient import FcClient, wait_socket
from tests.netns import tap_netns

TIMEOUT = 300
INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "fc-root: up"
grep -q 'root=/dev/vda rw' /proc/cmdline && grep -q ' / ext4 rw' /proc/mounts && echo "fc-root: root-ok"
ip link set lo up
ip link set eth0 up
ip addr add 10.77.0.2/24 dev eth0
ping -c 2 -W 10 10.77.0.1 >/dev/null && echo "fc-root: ping-ok"
show() { echo "fc-root: vdb $(cat /sys/block/vdb/size) $(dd if=/dev/vdb bs=512 count=1 iflag=direct 2>/dev/null | head -c 12)"; }
show
old=$(cat /sys/block/vdb/size)
echo "fc-root: waiting-swap"
i=0
while [ "$(cat /sys/block/vdb/size)" = "$old" ] && [ $i -lt 1200 ]; do sleep 0.2; i=$((i+1)); done
show
sync
reboot -f
"""


@pytest.fixture(scope="module")
def art():
    a = cached_default()
    assert a.complete, f"kvmvm's default kernel is not built: run `kvmvm image build` (KVMVM_HOME={a.home})"
    return a


@pytest.fixture
def rootfs(tmp_path) -> Path:
    busybox = shutil.which("busybox")
    assert busybox, "busybox (busybox-static) not installed"
    d = tmp_path / "root"
    (d / "bin").mkdir(parents=True)
    shutil.copy(busybox, d / "bin" / "busybox")
    for sub in ("proc", "sys", "dev", "tmp"):
        (d / sub).mkdir()
    (d / "init").write_text(INIT)
    (d / "init").chmod(0o755)
    img = tmp_path / "rootfs.ext4"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(d), str(img)], check=True)
    return img


@pytest.fixture
def netns():
    with tap_netns("fctap0", "kvmvm-fc") as ns:
        yield ns


def _wait_for(path: Path, text: str, proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not seen (exit {proc.poll()}):\n{path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def test_boot_root_drive_and_network_through_the_api_then_swap_a_drive(art, rootfs, netns, tmp_path):
    one, two = tmp_path / "one.img", tmp_path / "two.img"
    one.write_bytes(b"disk-number1".ljust(1 << 20, b"\0"))
    two.write_bytes(b"disk-number2".ljust(2 << 20, b"\0"))
    sock = str(tmp_path / "fc.sock")
    out = tmp_path / "console.txt"
    with open(out, "wb") as f:
        proc = subprocess.Popen([*netns, sys.executable, "-m", "kvmvm", "firecracker", "--api-sock", sock],
                                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_socket(sock, proc, timeout=120)
        api = FcClient(sock)
        api.conn.timeout = 60
        api.ok("PUT", "/boot-source", {"kernel_image_path": str(art.vmlinux),
                                       "boot_args": "console=ttyS0 reboot=k panic=1 pci=off tsc=reliable init=/init"})
        api.ok("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 256})
        api.ok("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(rootfs),
                                         "is_root_device": True, "is_read_only": False})
        api.ok("PUT", "/drives/scratch", {"drive_id": "scratch", "path_on_host": str(one),
                                          "is_root_device": False, "is_read_only": True})
        api.ok("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "fctap0",
                                                   "guest_mac": "06:00:AC:10:00:02"})
        api.ok("PUT", "/actions", {"action_type": "InstanceStart"})
        assert api.ok("GET", "/")["state"] == "Running"
        _wait_for(out, "fc-root: waiting-swap", proc, TIMEOUT)
        api.ok("PATCH", "/drives/scratch", {"drive_id": "scratch", "path_on_host": str(two)})
        rc = proc.wait(TIMEOUT)
        api.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text(errors="replace")
    assert rc == 0, text[-3000:]
    for line in ("fc-root: up", "fc-root: root-ok", "fc-root: ping-ok",
                 "fc-root: vdb 2048 disk-number1", "fc-root: vdb 4096 disk-number2"):
        assert line in text, f"{line!r} missing:\n{text[-3000:]}"
    assert not os.path.exists(sock)
