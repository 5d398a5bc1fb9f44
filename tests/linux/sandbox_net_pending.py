"""PENDING (not collected): kvmvm.Sandbox(network=True) in the test host: passt in a
network namespace made here (a TAP as its "outside", with a default route), the guest's
address by DHCP from passt, a TCP exchange with a server on the namespace's loopback
(passt maps the gateway to it), and passt gone with the sandbox. Rename to
test_sandbox_net.py once it passes in full runs.

Status (stop 20): passed once alone in the test host (QEMU 7.2), then failed twice (once
in a full linux-tier run, once alone, after the device's hold after a SYN was added): the
guest's `echo hello | nc 10.0.2.2 PORT` timed out after 60 s, as in stop 18's full run.
`kvmvm run --net user` does the same exchange and passes (test_run_net_linux.py). One
candidate, confirmed on the host but not shown to be this: Debian 12's passt loops
forever on a batch holding a SYN and its retransmission (docs/images.md); the device now
holds the guest's frames after a SYN until passt has read it. Next: record whether passt
is spinning when the exchange hangs (its /proc stat, and KVMVM_PASST_PCAP), and the
guest's view (`ss -tan`, `ip neigh`) before killing it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.linux.sandboxfixtures import image, private_snapshots  # noqa: F401 (fixtures)
from tests.netns import netns, passt_in

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


def test_network_true_reaches_the_host_through_passt(image, private_snapshots):
    """network=True: the guest's address by DHCP, a TCP exchange with a server on the
    namespace's loopback through the gateway address; passt ends with the sandbox."""
    setup = [["ip", "tuntap", "add", "dev", "t0", "mode", "tap"],
             ["ip", "addr", "add", "10.0.2.15/24", "dev", "t0"], ["ip", "link", "set", "t0", "up"],
             ["ip", "route", "add", "default", "via", "10.0.2.2"]]
    with netns(setup, "kvmvm-sb") as ns:
        code = NET_CHILD.format(root=str(ROOT), snaps=str(private_snapshots), store=str(image.store.root),
                                digest=image.digest)
        p = subprocess.run([*ns, sys.executable, "-c", code], capture_output=True,
                           text=True, timeout=300, env=dict(os.environ))
        assert p.returncode == 0, p.stderr[-3000:]
        out = json.loads(p.stdout.strip().splitlines()[-1])
        assert not out["warm"]                         # network sandboxes always boot cold
        assert "inet 10.0.2.15/" in out["addr"], out
        assert out["got"] == ["hello\n"] and out["reply"] == "pong\n", out
        assert passt_in(ns[-1]) == []
