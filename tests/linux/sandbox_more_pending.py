"""PENDING (not collected): kvmvm.Sandbox under load and with a network (linux tier).
Status (stop 18), from one full linux-tier run in the test host:
- (50 threads creating, using and dropping sandboxes: moved to sandbox_load_pending.py.)
- network=True through passt: the guest's TCP connection to the gateway (passt maps it to
  the namespace's loopback) timed out after 60 s; the same run's `kvmvm run --net user` test
  hung the same way, though it reaches the host in its lone runs (run_net_linux_pending.py).
Rename to test_sandbox_more_load.py once each passes in full linux-tier runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.linux.sandboxfixtures import image, private_snapshots, warm  # noqa: F401 (fixtures)
from tests.linux.test_sandbox_more import ROOT


NET_CHILD = r"""
import json, socket, sys, threading
sys.path.insert(0, {root!r})
from pathlib import Path
from kvmvm.sandbox import vm as svm
svm.snapshot_root = lambda home=None: Path({snaps!r})
from kvmvm.images.store import ImageStore
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
