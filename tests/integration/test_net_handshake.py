"""net_handshake.c (the ACK passt leaves out of a published port's handshake) between real
passt and a real Linux TCP stack, no VM: the "guest" is a network namespace whose TAP is
bridged by this test to passt's stream socket, with the C code built from
kvmvm/native/net_handshake.c looking at every frame as the virtio-net device does.

A client on passt's side connects to the published port; the guest's server speaks first.
Debian 12's passt never ACKs the guest's SYN,ACK, so the greeting arrives only because the
bridge hands the guest the ACK that net_handshake.c made. A connection to a port where
nothing listens is refused (the guest's RST closes it), as podman's -p does.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmvm import procfs
from tests.integration.conftest import ROOT
from tests.netns import netns, veth_uplink

pytestmark = pytest.mark.host

BRIDGE = r"""
import ctypes, fcntl, os, select, struct, sys, time
sys.path.insert(0, sys.argv[3])
from kvmvm.net.passt import Passt, PasstOptions
so, guest_ns = sys.argv[1], sys.argv[2]
passt = Passt(PasstOptions(tcp=["18080:80", "18081:81"]))
sock, sock_pid = passt.start(), passt.proc.pid                      # in this (the host's) namespace
libc = ctypes.CDLL(None, use_errno=True)
with open(f"/run/netns/{guest_ns}") as f:
    assert libc.setns(f.fileno(), 0x40000000) == 0                  # CLONE_NEWNET: the guest's side
tap = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tap, 0x400454ca, struct.pack("16sH", b"g0", 0x0002 | 0x1000))   # TUNSETIFF: TAP, no PI
hs = ctypes.CDLL(so)
state, ack = ctypes.create_string_buffer(16384), ctypes.create_string_buffer(128)
print("ready", sock_pid, flush=True)
buf, made, held = b"", 0, False
syn = ctypes.c_int(0)

def passt_read_all():                   # SIOCOUTQ 0, or give up after ~30 s (as the device)
    for _ in range(30000):
        if struct.unpack("i", fcntl.ioctl(sock.fileno(), 0x5411, b"\0" * 4))[0] == 0:
            return
        time.sleep(0.001)

while True:
    r, _, _ = select.select([tap, sock], [], [])
    if tap in r:                        # guest -> passt
        f = os.read(tap, 65536)
        # as virtio_net.c does: after a SYN, nothing more until passt has read it, or this
        # passt spins on a batch of the SYN,ACK and the guest's greeting
        if held:
            passt_read_all()
        sock.sendall(struct.pack(">I", len(f)) + f)
        n = hs.hs_from_guest(state, f, ctypes.c_size_t(min(len(f), 128)), ack, ctypes.c_size_t(128),
                             ctypes.byref(syn))
        held = bool(syn.value)
        if n:
            passt_read_all()            # and the ACK waits for that too
            os.write(tap, ack.raw[:n])
            made += 1
            print("made", made, flush=True)
    if sock in r:                       # passt -> guest
        d = sock.recv(65536)
        if not d:
            break
        buf += d
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
            n = struct.unpack(">I", buf[:4])[0]
            hs.hs_from_peer(state, buf[4:4 + n], ctypes.c_size_t(min(n, 128)))
            os.write(tap, buf[4:4 + n])
            buf = buf[4 + n:]
"""

SERVER = r"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80))
s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"guest-says-hi\n")
    c.close()
"""

CLIENT = r"""
import socket, sys
for port in (18080, 18081, 18080):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.settimeout(8)
            print(port, repr(c.recv(100)), flush=True)
    except OSError as e:
        print(port, type(e).__name__, flush=True)
"""


@pytest.fixture
def handshake_so(tmp_path) -> Path:
    so = tmp_path / "net_handshake.so"
    subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(so),
                    str(ROOT / "kvmvm/native/net_handshake.c")], check=True)
    return so


def _ip(*args) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def test_published_port_server_speaks_first(handshake_so):
    procs, out = [], []

    def stop():  # before the namespaces go
        for p in procs:
            p.kill()
        out.extend(p.communicate()[0] for p in procs)

    with contextlib.ExitStack() as stack:
        host = stack.enter_context(netns(veth_uplink("192.0.2.2/24", "192.0.2.1"), "kvmvm-hh"))[-1]
        guest = stack.enter_context(netns([], "kvmvm-hg"))[-1]
        stack.callback(stop)

        def start(ns, code, *args):
            p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            procs.append(p)
            return p

        bridge = start(host, BRIDGE, str(handshake_so), guest, str(ROOT))
        ready, passt_pid = bridge.stdout.readline().split()
        assert ready == "ready"
        # what passt's DHCP would give: the host's own address, its gateway
        _ip("-n", guest, "link", "set", "g0", "address", "52:54:00:12:34:56", "up")
        _ip("-n", guest, "addr", "add", "192.0.2.2/24", "dev", "g0")
        _ip("-n", guest, "route", "add", "default", "via", "192.0.2.1")
        server = start(guest, SERVER)
        assert server.stdout.readline() == "listening\n"
        client = subprocess.run(["ip", "netns", "exec", host, sys.executable, "-c", CLIENT],
                                capture_output=True, text=True, timeout=60)
        # two greetings (each heard first, within the client's 8 s), and port 81 refused in between
        assert client.stdout.splitlines() == ["18080 b'guest-says-hi\\n'", "18081 b''",
                                              "18080 b'guest-says-hi\\n'"], client
    assert out[0].count("made") >= 2, out[0]        # the bridge made the ACKs
    # and passt, its socket closed, ended (a passt that spun on a batch never does)
    for _ in range(50):
        if not Path(f"/proc/{passt_pid}").exists() or procfs.ended(int(passt_pid)):
            break
        time.sleep(0.1)
    else:
        os.kill(int(passt_pid), signal.SIGKILL)
        pytest.fail(f"passt {passt_pid} was still running 5 s after its socket closed")
