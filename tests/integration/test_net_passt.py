"""virtio-net over passt (`--net user`) and over an inherited stream socket (`--net fd=N`).

Real passt, in a network namespace made here (a veth with 10.0.2.15/24 and a default route
via 10.0.2.2, so passt has an "outside"), with a UDP echo server on the namespace's
loopback: the tiny guest virtio-net-passt gets its address by DHCP from passt, resolves
the gateway by ARP and exchanges UDP datagrams with the server (passt maps the gateway to
the host's loopback). Then the same guest against a peer played by the test over
`--net fd=N`, to drive the stream framing where passt never goes: frames split into
single bytes, frames batched, oversized frames, a stalled reader, a corrupt length.
"""
from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

from kvmvm import procfs
from tests.integration.conftest import KVMVM, ROOT, TINY_OUT
from tests.netns import netns as make_netns, passt_in, veth_uplink

pytestmark = pytest.mark.host

GUEST = str(TINY_OUT / "virtio-net-passt.elf")
PATHS = ["eventfd", "exitpath"]


def env_for(path: str) -> dict:
    return dict(os.environ, KVMVM_VIRTIO_EXITPATH="1" if path == "exitpath" else "0")


@pytest.fixture
def netns():
    with make_netns(veth_uplink("10.0.2.15/24", "10.0.2.2"), "kvmvm-p") as ns:
        yield ns[-1]


ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    d, a = s.recvfrom(65536)
    s.sendto(d, a)
"""


@pytest.fixture
def echo_port(netns):
    p = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", ECHO],
                         stdout=subprocess.PIPE, text=True)
    try:
        yield int(p.stdout.readline())
    finally:
        p.kill()
        p.wait()


# A guest's answer to passt's SYN for a published port that sends Debian 12's passt into an
# endless loop: the SYN,ACK and a data segment of the same connection in one read (see
# kvmvm/native/virtio_net.c). This stand-in for kvmvm starts a passt as kvmvm does, plays
# that guest on the socket, and is then killed, as a crashed kvmvm would be.
SPINNER = r"""
import socket, struct, sys, time
sys.path.insert(0, sys.argv[1])
from kvmvm.net.passt import Passt, PasstOptions

def csum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

def tcp(eth, ips, ports, seq, ack, flags, data=b""):
    t = struct.pack("!HHIIBBHHH", *ports, seq, ack, 5 << 4, flags, 65535, 0, 0) + data
    t = t[:16] + struct.pack("!H", csum(ips[0] + ips[1] + struct.pack("!BBH", 0, 6, len(t)) + t)) + t[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(t), 0, 0x4000, 64, 6, 0, *ips)
    f = eth + b"\x08\x00" + ip[:10] + struct.pack("!H", csum(ip)) + ip[12:] + t
    return struct.pack(">I", len(f)) + f

passt = Passt(PasstOptions(tcp=["18090:80"]))
sock = passt.start()
print(passt.proc.pid, flush=True)
client = socket.create_connection(("127.0.0.1", 18090), timeout=10)
buf = b""
while True:                     # passt's SYN to the guest's port 80
    buf += sock.recv(65536)
    while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
        n = struct.unpack(">I", buf[:4])[0]
        f, buf = buf[4:4 + n], buf[4 + n:]
        if f[12:14] == b"\x08\x00" and f[23] == 6 and f[47] == 0x02:
            sport, dport, seq = struct.unpack("!HHI", f[34:42])
            eth, ips = f[6:12] + f[0:6], (f[30:34], f[26:30])
            syn_ack = tcp(eth, ips, (dport, sport), 1000, seq + 1, 0x12)
            data = tcp(eth, ips, (dport, sport), 1001, seq + 1, 0x18, b"hello\n")
            sock.sendall(syn_ack + data)    # one write: passt reads them as one batch
            print("sent", flush=True)
            time.sleep(3600)
"""


def test_a_passt_a_guest_sent_spinning_is_killed_by_the_next_start(netns):
    """A guest can send Debian 12's passt into an endless loop, in which it never sees its
    socket close; the next passt any kvmvm starts kills the one a dead kvmvm left."""
    from kvmvm.net import passt as passt_mod
    vm = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", SPINNER, str(ROOT)],
                          stdout=subprocess.PIPE, text=True)
    try:
        pid = int(vm.stdout.readline())
        assert vm.stdout.readline() == "sent\n"
        time.sleep(0.5)
    finally:
        vm.kill()               # kvmvm dies: its end of passt's socket closes
        vm.wait()
    time.sleep(2)
    try:
        # the loop: passt never read the close (a passt without the bug would have ended)
        assert not procfs.ended(pid), "passt ended: the reproducer no longer spins it"
        assert int(procfs.stat_fields(pid)[1]) != vm.pid         # orphaned
        assert passt_mod.reclaim() >= 1
        deadline = time.monotonic() + 3
        while not procfs.ended(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert procfs.ended(pid)
    finally:
        if not procfs.ended(pid):
            os.kill(pid, signal.SIGKILL)


# The same guest with kvmvm alive: its watchdog ends the loop (window shortened for the test)
WATCHED = SPINNER.replace("passt = Passt(", "import kvmvm.net.passt as pm; pm.SPIN_WINDOW_S = 3\npasst = Passt(").replace(
    "            time.sleep(3600)\n",
    "            t0 = time.monotonic()\n"
    "            passt.proc.wait(30)\n"
    "            print(f'ended {time.monotonic() - t0:.1f} {passt.proc.returncode}', flush=True)\n"
    "            passt.stop()\n"
    "            sys.exit(0)\n")


def test_a_spinning_passt_is_killed_by_the_watchdog(netns):
    """While kvmvm runs, a passt the guest sent into its loop is killed within the watchdog's
    window, with one line on stderr (and only one when the VM then ends)."""
    assert "pm.SPIN_WINDOW_S = 3" in WATCHED and "passt.proc.wait(30)" in WATCHED
    vm = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", WATCHED, str(ROOT)],
                        capture_output=True, text=True, timeout=60)
    assert vm.returncode == 0, vm.stdout + vm.stderr
    lines = vm.stdout.splitlines()
    assert lines[1] == "sent"
    took, status = lines[2].split()[1:]
    assert 3 <= float(took) < 8 and status == str(-signal.SIGKILL)
    err = vm.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith("kvmvm: passt spun (it ran flat out for "), vm.stderr
    assert err[0].endswith("; the guest's network is down")
    assert passt_in(netns) == []


# A guest at full speed: UDP frames to the host as fast as the socket takes them, for twice
# the watchdog's (shortened) window. passt at work waits now and then: it must live.
FLOOD = r"""
import socket, struct, sys, threading, time
sys.path.insert(0, sys.argv[1])
import kvmvm.net.passt as pm
pm.SPIN_WINDOW_S = 2
passt = pm.Passt(pm.PasstOptions())
sock = passt.start()
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 19999))
got = [0]
def drain(s, n):
    while True:
        n[0] += len(s.recv(65536))
threading.Thread(target=drain, args=(rx, got), daemon=True).start()
threading.Thread(target=drain, args=(sock, [0]), daemon=True).start()
udp = struct.pack("!HHHH", 40000, 19999, 8 + 1400, 0) + b"x" * 1400
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                 bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2]))
s = sum(struct.unpack("!10H", ip))
s = (s & 0xffff) + (s >> 16)
ip = ip[:10] + struct.pack("!H", ~s & 0xffff) + ip[12:]
f = b"\xff" * 6 + bytes.fromhex("9a5557aabbcc") + b"\x08\x00" + ip + udp
batch = (struct.pack(">I", len(f)) + f) * 32
t0 = time.monotonic()
while time.monotonic() - t0 < 2 * pm.SPIN_WINDOW_S + 1:
    sock.sendall(batch)
print("alive" if passt.proc.poll() is None else "killed", got[0] // 1400, flush=True)
passt.stop()
"""


def test_a_busy_passt_is_not_taken_for_a_spinning_one(netns):
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", FLOOD, str(ROOT)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    state, delivered = r.stdout.split()
    assert state == "alive" and int(delivered) > 1000, r.stdout
    assert "passt" not in r.stderr, r.stderr


def boot_in(ns: str, *args, env=None, **kw):
    return subprocess.run(["ip", "netns", "exec", ns, *KVMVM, "boot", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, **kw)


@pytest.mark.parametrize("path", PATHS)
def test_guest_talks_to_real_passt(tiny_images, kvm_ok, netns, echo_port, path):
    r = boot_in(netns, "--kernel", GUEST, "--net", "user", "--cmdline", f"port={echo_port} count=3",
                "--timeout", "60", env=env_for(path), timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "passt: dhcp offer 10.0.2.15 router 10.0.2.2" in r.stdout
    assert "passt: arp 10.0.2.2 is at" in r.stdout
    for i, n in enumerate((18, 618, 1218)):
        assert f"passt: udp echo {i} ({n} bytes)" in r.stdout
    assert "virtio-net-passt: ok" in r.stdout
    assert passt_in(netns) == []                     # passt ended with the VM


def test_passt_ends_when_kvmvm_is_killed(tiny_images, kvm_ok, netns):
    vm = subprocess.Popen(["ip", "netns", "exec", netns, *KVMVM, "boot", "--kernel",
                           str(TINY_OUT / "halt.elf"), "--net", "user", "--timeout", "60"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not passt_in(netns):
            assert vm.poll() is None and time.monotonic() < deadline, "passt never started"
            time.sleep(0.05)
        assert vm.stdout.readline().startswith(b"halt")
        vm.send_signal(signal.SIGKILL)      # ip netns exec execs kvmvm: this is kvmvm itself
        vm.wait(10)
        deadline = time.monotonic() + 3
        while passt_in(netns) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert passt_in(netns) == []        # its socket closed: passt went away by itself
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()


def test_a_passt_that_dies_under_the_vm_is_reported(tiny_images, kvm_ok, netns):
    """passt killed while the VM runs: the VM goes on without a network, and kvmvm says
    so in one line when it ends (a passt ended by the VM's end exits 0 and says nothing)."""
    vm = subprocess.Popen(["ip", "netns", "exec", netns, *KVMVM, "boot", "--kernel",
                           str(TINY_OUT / "halt.elf"), "--net", "user", "--timeout", "4"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not passt_in(netns):
            assert vm.poll() is None and time.monotonic() < deadline, "passt never started"
            time.sleep(0.05)
        assert vm.stdout.readline().startswith("halt")      # the VM runs: passt started
        os.kill(passt_in(netns)[0], signal.SIGSEGV)
        out, err = vm.communicate(timeout=30)
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()
    assert "kvmvm: passt ended while the VM ran (killed by SIGSEGV); the guest's network went with it" in err, err
    r = boot_in(netns, "--kernel", str(TINY_OUT / "halt.elf"), "--net", "user", "--timeout", "2", timeout=30)
    assert "passt" not in r.stderr, r.stderr


def test_passt_failure_is_one_line(tiny_images, kvm_ok, netns):
    holder = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c",
                               "import socket, sys, time; s = socket.socket(); s.bind(('0.0.0.0', 0));"
                               "s.listen(); print(s.getsockname()[1], flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(holder.stdout.readline())
        r = boot_in(netns, "--kernel", str(TINY_OUT / "hello.elf"), "--net", f"user,tcp={port}", timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvmvm: passt failed:") and str(port) in lines[0]
    assert passt_in(netns) == []


def test_net_spec_errors(tiny_images):
    for spec, why in [("user,tcp=70000", "out of range"), ("user,bogus=1", "unknown"),
                      ("fd=notanumber", "must be a number"), ("fd=987", "not open")]:
        r = subprocess.run([*KVMVM, "boot", "--kernel", str(TINY_OUT / "hello.elf"), "--net", spec],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and why in r.stderr and len(r.stderr.strip().splitlines()) == 1, (spec, r.stderr)


# ---- a peer played by the test over --net fd=N ----------------------------------------

GW = bytes([10, 0, 2, 2])
ME = bytes([10, 0, 2, 15])
GW_MAC = bytes.fromhex("020000000002")


def _csum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _udp(dst_mac, src, dst, sport, dport, payload) -> bytes:
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0, src, dst))
    ip[10:12] = struct.pack("!H", _csum(bytes(ip)))
    return dst_mac + GW_MAC + b"\x08\x00" + bytes(ip) + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


class FakeNet:
    """Answers the guest as passt would: DHCP offer, ARP reply, UDP echo."""

    def __init__(self, sock: socket.socket, mode: str):
        self.sock, self.mode = sock, mode
        self.seen = []
        self.echoed = 0
        self.burst = []         # sequence numbers of the discard datagrams, as received
        self.thread = threading.Thread(target=self.run, daemon=True)

    def frames(self):
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while len(buf) >= 4 and len(buf) >= 4 + struct.unpack("!I", buf[:4])[0]:
                n = struct.unpack("!I", buf[:4])[0]
                yield buf[4:4 + n]
                buf = buf[4 + n:]

    def send(self, *frames: bytes) -> None:
        wire = b"".join(struct.pack("!I", len(f)) + f for f in frames)
        if self.mode == "dribble":
            for i in range(len(wire)):
                self.sock.sendall(wire[i:i + 1])
        else:
            self.sock.sendall(wire)

    def reply(self, f: bytes):
        etype = f[12:14]
        if etype == b"\x08\x06" and f[20:22] == b"\x00\x01" and f[38:42] == GW:
            arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + GW_MAC + GW + f[22:28] + f[28:32]
            return f[6:12] + GW_MAC + b"\x08\x06" + arp
        if etype != b"\x08\x00" or f[23] != 17:
            return None
        sport, dport = struct.unpack("!HH", f[34:38])
        payload = f[42:14 + struct.unpack("!H", f[16:18])[0]]
        if (sport, dport) == (68, 67):
            p = bytearray(300)
            p[0:4] = b"\x02\x01\x06\x00"
            p[4:8] = payload[4:8]
            p[16:20] = ME
            p[28:34] = payload[28:34]
            p[236:240] = b"\x63\x82\x53\x63"
            p[240:] = bytes([53, 1, 2, 1, 4, 255, 255, 255, 0, 3, 4, *GW, 255]).ljust(60, b"\0")
            return _udp(b"\xff" * 6, GW, b"\xff\xff\xff\xff", 67, 68, bytes(p))
        if f[30:34] == GW and dport == 9:
            if self.mode == "slow-reader" and not self.burst:
                time.sleep(1.5)             # stop reading: the guest's burst fills the socket
            self.burst.append(int(payload[12:16]))
            return None
        if f[30:34] == GW and dport == 7:
            self.echoed += 1
            return _udp(f[6:12], GW, ME, 7, sport, payload)
        return None

    def run(self):
        for f in self.frames():
            self.seen.append(f)
            r = self.reply(f)
            if r is None:
                continue
            if self.mode == "batched":      # junk around the reply, all in one write
                self.send(b"\x00" * 4000, GW_MAC + GW_MAC + b"\x88\xb5" + b"x" * 50, r, r)
            elif self.mode == "bad-length" and f[12:14] == b"\x08\x00":
                self.sock.sendall(struct.pack("!I", 0x7FFFFFFF) + b"garbage")
            else:
                self.send(r)


@pytest.mark.parametrize("mode", ["plain", "dribble", "batched", "slow-reader"])
def test_stream_framing_against_a_played_peer(tiny_images, kvm_ok, mode):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    burst = 0
    if mode == "slow-reader":
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)     # kvmvm's side fills at once
        burst = 40                          # 48 KiB while the peer does not read
    peer = FakeNet(ours, mode)
    peer.thread.start()
    try:
        r = subprocess.run([*KVMVM, "boot", "--kernel", GUEST, "--net", f"fd={theirs.fileno()}",
                            "--cmdline", f"port=7 count=3 burst={burst}", "--timeout", "60"], pass_fds=[theirs.fileno()],
                           cwd=ROOT, capture_output=True, text=True, timeout=90)
    finally:
        theirs.close()
        ours.close()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "virtio-net-passt: ok" in r.stdout
    assert peer.echoed >= 3
    assert peer.burst == list(range(burst))     # every frame, whole and in order


def test_stream_corrupt_length_stops_input_not_the_vmm(tiny_images, kvm_ok):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    peer = FakeNet(ours, "bad-length")
    peer.thread.start()
    try:
        t0 = time.monotonic()
        r = subprocess.run([*KVMVM, "boot", "--kernel", GUEST, "--net", f"fd={theirs.fileno()}",
                            "--cmdline", "port=7 count=1", "--timeout", "60"], pass_fds=[theirs.fileno()],
                           cwd=ROOT, capture_output=True, text=True, timeout=90)
    finally:
        theirs.close()
        ours.close()
    # the guest gets no offer (the stream is unusable after the bad length) and says so;
    # kvmvm itself exits normally with the guest's status, no crash, no spinning
    assert r.returncode >= 0, r.stderr
    assert "FAIL no DHCP offer" in r.stdout, r.stdout + r.stderr
    assert "device needs reset" not in r.stdout
    assert time.monotonic() - t0 < 60


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def _inq(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def test_after_a_syn_nothing_more_goes_until_the_peer_has_read_it(tiny_images, kvm_ok):
    """peer=passt: after the guest's SYN the device sends nothing more until the peer has
    read it, however long that takes (a SYN and its retransmission in one read of Debian
    12's passt loop it forever). The guest sends its SYN again every 0.5 s; a peer that reads
    nothing for 2.5 s must find exactly one frame waiting; then each read lets one more go."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    vm = subprocess.Popen([*KVMVM, "boot", "--kernel", str(TINY_OUT / "virtio-net.elf"),
                           "--net", f"fd={theirs.fileno()},peer=passt", "--cmdline", "syn count=1",
                           "--timeout", "60"], pass_fds=[theirs.fileno()], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    theirs.close()
    try:
        deadline = time.monotonic() + 30
        while _inq(ours) == 0:
            assert vm.poll() is None and time.monotonic() < deadline, vm.communicate()
            time.sleep(0.01)
        one = 4 + 60                          # the length word and a (padded) SYN frame
        waited = []
        for _ in range(25):                   # 2.5 s, five of the guest's 0.5 s retransmissions
            time.sleep(0.1)
            waited.append(_inq(ours))
        assert set(waited) == {one}, waited
        frames = []
        ours.settimeout(5)
        for _ in range(3):                    # read one: the next (held so far) follows
            n = struct.unpack("!I", ours.recv(4, socket.MSG_WAITALL))[0]
            frames.append(ours.recv(n, socket.MSG_WAITALL))
        for f in frames:
            assert f[12:14] == b"\x08\x00" and f[23] == 6 and f[47] == 0x02 and f[34:38] == bytes([0x9c, 0x40, 0, 80])
        mac = frames[0][6:12]
        ours.sendall(struct.pack("!I", 14 + 8) + mac + GW_MAC + b"\x88\xb5" + b"ping 1\0\0")
        ours.settimeout(None)
        threading.Thread(target=_drain, args=(ours,), daemon=True).start()
        # (it keeps reading: the guest's later SYNs, and its pong)
        out, err = vm.communicate(timeout=60)
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()
        ours.close()
    assert vm.returncode == 0, out + err
    assert "net: pong 1" in out and "virtio-net: ok" in out


def test_net_fd_peer_option_is_checked(tiny_images):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = b.fileno()
    with a, b:
        r = subprocess.run([*KVMVM, "boot", "--kernel", str(TINY_OUT / "hello.elf"), "--net",
                            f"fd={fd},peer=slirp"], pass_fds=[fd], cwd=ROOT, capture_output=True,
                           text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.strip() == (
        f"kvmvm: --net 'fd={fd},peer=slirp': peer=slirp is not known (known: peer=passt)")
