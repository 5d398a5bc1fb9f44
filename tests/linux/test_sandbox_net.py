"""kvmvm.Sandbox(network=True) in the test host: passt in a network namespace made here
(two uplinks: a TAP without carrier holding the guest's own address, and a dummy device as
in test_run_net_linux.py), the guest's address by DHCP from passt, a TCP exchange with a
server on the namespace's loopback (passt maps the gateway to it), and passt gone with the
sandbox. A failed exchange is tried twice more, recording passt's state (spinning or not)
and the guest's view (routes, neighbours, sockets), and the test fails on the first.

History: in stop 20 the exchange timed out in 2 of 3 runs under load. The device then let
the guest's frames go 0.5 s after a SYN even when passt had not read it, so a SYN and its
retransmission could meet in one read, which sends Debian 12's passt into its endless loop
(docs/images.md); the hold now lasts until passt has read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pathlib import Path

from tests.linux.sandboxfixtures import image, private_snapshots  # noqa: F401 (fixtures)
from tests.netns import netns, passt_in

ROOT = Path(__file__).resolve().parents[2]

NET_CHILD = r"""
import json, os, socket, sys, threading, time
sys.path.insert(0, {root!r})
from pathlib import Path
from kvmvm.sandbox import vm as svm
svm.snapshot_root = lambda home=None: Path({snaps!r})
from kvmvm.images.store import ImageStore
from kvmvm.sandbox import Sandbox
img = ImageStore(root={store!r}, rootfs_type="ext4").resolve({digest!r})
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(4)
got = []
def serve():
    while True:
        c, _ = srv.accept()
        got.append(c.recv(100).decode())
        c.sendall(b"pong\n")
        c.close()
threading.Thread(target=serve, daemon=True).start()

def passt_state():              # is passt spinning (state R, CPU climbing, no waits)?
    out = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and open(f"/proc/{{d}}/comm").read().startswith("passt"):
                st = open(f"/proc/{{d}}/stat").read().rsplit(")", 1)[1].split()
                vol = [ln.split()[1] for ln in open(f"/proc/{{d}}/status") if ln.startswith("voluntary_ctxt")]
                out.append({{"pid": d, "state": st[0], "cpu_ticks": int(st[11]) + int(st[12]), "waits": vol}})
        except OSError:
            pass
    return out

sb = Sandbox.create(img, memory_mib=256, network=True)
out = {{"warm": sb.warm, "tries": [], "diag": []}}
out["addr"] = sb.commands.run("ip addr", check=False, timeout=60).stdout
gw = "$(ip route | awk '/^default/ {{print $3}}')"
for i in range(3):
    t0 = time.monotonic()
    r = sb.commands.run("echo hello | timeout 20 nc %s %d" % (gw, srv.getsockname()[1]), check=False, timeout=60)
    out["tries"].append({{"s": round(time.monotonic() - t0, 1), "rc": r.exit_code, "out": r.stdout,
                         "err": r.stderr[-300:]}})
    if r.stdout == "pong\n":
        break
    d = sb.commands.run("ip route; ip neigh; cat /proc/net/tcp; cat /proc/net/dev", check=False, timeout=60)
    out["diag"].append({{"guest": d.stdout[-3000:], "passt": passt_state()}})
out["got"] = got
sb.kill()
print(json.dumps(out), flush=True)
"""

SETUPS = {
    # a TAP (no carrier) as passt's outside, with the guest's own address on it
    "tap": [["ip", "tuntap", "add", "dev", "t0", "mode", "tap"],
            ["ip", "addr", "add", "10.0.2.15/24", "dev", "t0"], ["ip", "link", "set", "t0", "up"],
            ["ip", "route", "add", "default", "via", "10.0.2.2"]],
    # as test_run_net_linux.py: a dummy uplink
    "dummy": [["ip", "link", "add", "eth0", "type", "dummy"],
              ["ip", "addr", "add", "192.0.2.2/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"],
              ["ip", "route", "add", "default", "via", "192.0.2.1"]],
}


@pytest.mark.parametrize("uplink", sorted(SETUPS))
def test_network_true_reaches_the_host_through_passt(image, private_snapshots, uplink):
    """network=True: the guest's address by DHCP, a TCP exchange with a server on the
    namespace's loopback through the gateway address; passt ends with the sandbox."""
    with netns(SETUPS[uplink], "kvmvm-sb") as ns:
        code = NET_CHILD.format(root=str(ROOT), snaps=str(private_snapshots), store=str(image.store.root),
                                digest=image.digest)
        p = subprocess.run([*ns, sys.executable, "-c", code], capture_output=True,
                           text=True, timeout=400, env=dict(os.environ))
        assert p.returncode == 0, p.stderr[-3000:]
        out = json.loads(p.stdout.strip().splitlines()[-1])
        print(json.dumps(out, indent=1))
        assert not out["warm"]                         # network sandboxes always boot cold
        assert "inet 10.0.2.15/" in out["addr"] or "inet 192.0.2.2/" in out["addr"], out
        assert len(out["tries"]) == 1 and out["tries"][0]["out"] == "pong\n", out
        assert out["got"] == ["hello\n"], out
        assert passt_in(ns[-1]) == []
