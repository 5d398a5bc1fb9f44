"""PENDING (not collected): `kvmvm run --net user -p` in the test host. Status (stop 18):
- Outbound works in each lone run (the guest gets its address by DHCP from passt and
  reaches a host server at passt's gateway address: `out=host-says-hi`).
- Inbound through `-p 18080:80` has not worked yet: the guest listens on port 80 (since the
  agent lets any user bind below 1024) and serves every connection for 60 s, but the host's
  connections to 127.0.0.1:18080 never got its data, in two lone runs. Cause not found;
  the driver now records each connect error with its time (`connect_errors`).
- In one full linux-tier run the guest's outbound connection hung instead (so did the
  network test of sandbox_more_pending.py in the same test host); cause not found.
Rename to test_run_net_linux.py once it passes in full linux-tier runs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.linux.netns import routed_netns as netns_routed

from tests.linux.test_run_linux import KVMVM, TIMEOUT, _no_kvmvm_children, image, xdg  # noqa: F401
# --- --net user: passt in a network namespace the test creates (a dummy interface with a
# default route, since passt copies its addresses from that interface) ---

_NET_DRIVER = r'''
import json, os, socket, subprocess, sys, threading, time
image, kvmvm = sys.argv[1], sys.argv[2:]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 9099))
srv.listen(1)
accepted = []
def answer():
    c, _ = srv.accept()
    accepted.append(round(time.monotonic() - t0, 1))
    c.sendall(b"host-says-hi\n")
    c.close()
t0 = time.monotonic()
threading.Thread(target=answer, daemon=True).start()
guest = ("GW=$(ip route | awk '/^default/ {print $3}'); echo gw=$GW; "
         "ip -4 addr; cat /proc/net/arp; echo out=$(timeout 30 nc $GW 9099 </dev/null); echo nc-rc=$?; "
         # a connection passt made before the guest listened may still reach nc: serve each
         "timeout 60 sh -c 'while :; do echo guest-says-hi | nc -l -p 80; done'; echo served")
p = subprocess.Popen([*kvmvm, "run", "--timeout", "240", "--net", "user", "-p", "18080:80", image, "sh", "-c", guest],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
got, errors, deadline = "", [], time.monotonic() + 180
while p.poll() is None and time.monotonic() < deadline and "guest-says-hi" not in got:
    try:
        with socket.create_connection(("127.0.0.1", 18080), timeout=5) as c:
            c.settimeout(10)
            got = c.recv(100).decode()
    except OSError as e:
        if not errors or errors[-1][1] != repr(e):
            errors.append((round(time.monotonic() - t0, 1), repr(e)))
        time.sleep(0.5)
inbound_s = round(time.monotonic() - t0, 1)
try:
    out, err = p.communicate(timeout=150 if "guest-says-hi" in got else 10)
except subprocess.TimeoutExpired:
    p.terminate()
    try:
        out, err = p.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
print(json.dumps({"accepted": accepted, "rc": p.returncode, "out": out, "err": err, "inbound": got, "connect_errors": errors,
                  "inbound_s": inbound_s, "total_s": round(time.monotonic() - t0, 1)}))
'''


@pytest.fixture
def routed_netns():
    with netns_routed() as ns:
        yield ns


def test_net_user_outbound_and_published_port(image, xdg, routed_netns):
    """The guest reaches a host service through passt's gateway address, and a host client
    reaches the guest's port 80 through `-p 18080:80`; passt is gone afterwards."""
    import json

    env = dict(os.environ, XDG_RUNTIME_DIR=xdg)
    r = subprocess.run([*routed_netns, sys.executable, "-c", _NET_DRIVER, image[0], *KVMVM],
                       capture_output=True, text=True, timeout=TIMEOUT + 100, env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["rc"] == 0, res
    lines = res["out"].splitlines()
    assert "out=host-says-hi" in lines and lines[-1] == "served", res
    assert res["inbound"] == "guest-says-hi\n", (res["connect_errors"][-5:], res)
    _no_kvmvm_children()
