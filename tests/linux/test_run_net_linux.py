"""`kvmvm run --net user -p HOST:GUEST` in the test host: passt in a network namespace the
test creates (a dummy uplink with a default route, since passt copies its addresses from
the interface with the default route).

Outbound: the guest gets its address by DHCP from passt and reaches a server on the
namespace's loopback at passt's gateway address. Inbound (podman's `-p` semantics): a
client on the namespace's 127.0.0.1:18080 reaches the guest's port 80, and the guest
speaks first (Debian 12's passt leaves out the ACK that completes that handshake; the
device makes it, kvmvm/native/net_handshake.c, and holds it until passt has read the
guest's SYN,ACK, kvmvm/native/virtio_net.c).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.netns import passt_in, routed_netns as netns_routed
from tests.linux.test_run_linux import KVMVM, TIMEOUT, image, xdg  # noqa: F401 (fixtures)

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
         "ip -4 addr; echo out=$(timeout 60 nc $GW 9099 </dev/null); echo nc-rc=$?; "
         # a connection passt made before the guest listened is refused: serve each in turn
         "timeout 90 sh -c 'while :; do echo guest-says-hi | nc -l -p 80; done'; echo served")
p = subprocess.Popen([*kvmvm, "run", "--timeout", "240", "--net", "user", "-p", "18080:80", image, "sh", "-c", guest],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
got, errors, tries, deadline = "", [], 0, time.monotonic() + 200
while p.poll() is None and time.monotonic() < deadline and "guest-says-hi" not in got:
    try:
        tries += 1
        with socket.create_connection(("127.0.0.1", 18080), timeout=5) as c:
            c.settimeout(10)
            got = c.recv(100).decode()
    except OSError as e:
        if not errors or errors[-1][1] != repr(e):
            errors.append((round(time.monotonic() - t0, 1), repr(e)))
    if "guest-says-hi" not in got:
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
print(json.dumps({"accepted": accepted, "rc": p.returncode, "out": out, "err": err, "inbound": got,
                  "connect_errors": errors, "tries": tries, "inbound_s": inbound_s,
                  "total_s": round(time.monotonic() - t0, 1)}))
'''


@pytest.fixture
def routed_netns():
    with netns_routed() as ns:
        yield ns


def test_net_user_outbound_and_published_port(image, xdg, routed_netns):
    """The guest reaches a host service through passt's gateway address, and a host client
    reaches the guest's port 80 through `-p 18080:80` and hears it first; no passt is
    left in the namespace afterwards."""
    env = dict(os.environ, XDG_RUNTIME_DIR=xdg)
    r = subprocess.run([*routed_netns, sys.executable, "-c", _NET_DRIVER, image[0], *KVMVM],
                       capture_output=True, text=True, timeout=TIMEOUT + 100, env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["rc"] == 0, res
    lines = res["out"].splitlines()
    assert "out=host-says-hi" in lines and lines[-1] == "served", res
    assert res["inbound"] == "guest-says-hi\n", (res["connect_errors"][-5:], res)
    assert passt_in(routed_netns[-1]) == []
