"""PENDING (not collected): kvmvm.Sandbox(network=True) in the test host: passt in a
network namespace made here (a TAP as its "outside", with a default route), the guest's
address by DHCP from passt, a TCP exchange with a server on the namespace's loopback
(passt maps the gateway to it), and passt gone with the sandbox.
Status (stop 19): run with KVMVM_PASST_PCAP in the QEMU 10 test host, the guest's DHCP got
no answer (see run_net_linux_pending.py: with passt's --pcap there, passt saw no frame);
without it, not run since. Moved here from sandbox_more_pending.py. Rename to test_sandbox_net.py once it passes in the test host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.linux.sandboxfixtures import image, private_snapshots  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]

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


def test_network_true_reaches_the_host_through_passt(image, private_snapshots):
    """network=True: the guest's address by DHCP, a TCP exchange with a server on the
    namespace's loopback through the gateway address; passt ends with the sandbox."""
    ns = f"kvmvm-sb-{uuid.uuid4().hex[:6]}"
    ip = ["ip", "-n", ns]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"], ["tuntap", "add", "dev", "t0", "mode", "tap"],
                    ["addr", "add", "10.0.2.15/24", "dev", "t0"], ["link", "set", "t0", "up"],
                    ["route", "add", "default", "via", "10.0.2.2"]):
            subprocess.run(ip + cmd, check=True, capture_output=True)
        code = NET_CHILD.format(root=str(ROOT), snaps=str(private_snapshots), store=str(image.store.root),
                                digest=image.digest)
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True,
                           text=True, timeout=300, env=dict(os.environ))
        assert p.returncode == 0, p.stderr[-3000:]
        out = json.loads(p.stdout.strip().splitlines()[-1])
        assert not out["warm"]                         # network sandboxes always boot cold
        assert "inet 10.0.2.15/" in out["addr"], out
        assert out["got"] == ["hello\n"] and out["reply"] == "pong\n", out
        assert _passt_in(os.stat(f"/run/netns/{ns}").st_ino) == []
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
