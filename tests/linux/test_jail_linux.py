"""A Linux guest jailed (`kvmvm boot --jail`), with cgroup v2 (linux tier: standard KVM).

The standard-KVM test host mounts no cgroup file system; the test mounts cgroup2 at
/sys/fs/cgroup when nothing is there (a host with systemd has it already) and checks that
the VM's cgroup had the limits and is gone afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kvmvm.image import cached_default

KVMVM = [sys.executable, "-m", "kvmvm"]
CG = "/sys/fs/cgroup"


@pytest.fixture(scope="module")
def art():
    a = cached_default()
    assert a.complete, f"kvmvm's default kernel/initramfs are not built (KVMVM_HOME={a.home})"
    return a


@pytest.fixture
def cgroup_fs():
    mounted = False
    if not os.path.exists(f"{CG}/cgroup.controllers") and not os.path.isdir(f"{CG}/memory"):
        subprocess.run(["mount", "-t", "cgroup2", "none", CG], check=True)
        mounted = True
    try:
        yield os.path.exists(f"{CG}/cgroup.controllers")
    finally:
        if mounted:
            for d in sorted(Path(CG, "kvmvm").glob("*"), reverse=True) if Path(CG, "kvmvm").exists() else []:
                if d.is_dir():      # the rest are the cgroup's own control files
                    d.rmdir()
            if Path(CG, "kvmvm").exists():
                Path(CG, "kvmvm").rmdir()
            subprocess.run(["umount", CG])


def test_linux_guest_jailed_with_blk_vsock_rng(art, cgroup_fs, tmp_path):
    img = tmp_path / "disk.ext4"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    jroot = tmp_path / "jails"
    uds = tmp_path / "socks" / "v.sock"
    uds.parent.mkdir()
    seen = {}

    def watch():    # the jail's state and cgroup while the VM runs
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and "state" not in seen:
            for f in jroot.glob("*.json") if jroot.exists() else []:
                try:
                    st = json.loads(f.read_text())
                except ValueError:
                    continue
                if uds.exists():
                    seen["state"] = st
                    seen["limits"] = {n: Path(st["cgroups"][0], n).read_text().strip()
                                      for n in ("memory.max", "pids.max", "cpu.max")} if cgroup_fs else {}
            time.sleep(0.2)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    script = ("mount /dev/vda /mnt && echo jailed-$((6*7)) > /mnt/f && sync && umount /mnt && echo blk-ok\n"
              "ls /sys/bus/virtio/devices | wc -l\n"
              "dd if=/dev/hwrng bs=16 count=1 2>/dev/null | wc -c\n")
    p = subprocess.run([*KVMVM, "boot", "--timeout", "200", "--jail", "--drive", str(img),
                        "--vsock", f"cid=5,uds={uds}"], input=script, capture_output=True,
                       text=True, errors="replace", timeout=240,
                       env=dict(os.environ, KVMVM_JAIL_ROOT=str(jroot)))
    t.join(5)
    assert p.returncode == 0, f"{p.stderr}\n{p.stdout[-3000:]}"
    lines = [l.strip() for l in p.stdout.splitlines()]
    assert "blk-ok" in lines and "3" in lines and "16" in lines, p.stdout[-3000:]
    out = subprocess.run(["debugfs", "-R", "cat /f", str(img)], capture_output=True, text=True).stdout
    assert out.strip() == "jailed-42"
    st = seen.get("state")
    assert st, "the jail's state file and vsock socket were never seen"
    if cgroup_fs:
        assert seen["limits"] == {"memory.max": str((128 + 256) << 20), "pids.max": "128",
                                  "cpu.max": "200000 100000"}
    for c in st["cgroups"]:
        assert not os.path.exists(c), f"cgroup left behind: {c}"
    assert os.listdir(jroot) == [] and not uds.exists()
