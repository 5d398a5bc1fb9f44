"""Network interfaces through Firecracker's API with token-bucket rate limiters: frames a
tiny guest sends (tx) or receives (rx) through a TAP in a network namespace are held to
the configured rate, and a PATCH changes the limit while the guest runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.fcclient import FcClient, wait_socket
from tests.integration.test_virtio import ETH_P, netns, packet_socket_in  # noqa: F401 (fixture)

GUEST_MAC = "52:54:00:aa:bb:02"


@pytest.fixture
def fc_in_ns(tmp_path, kvm_ok, tiny_images, netns):  # noqa: F811
    sock = str(tmp_path / "fc.sock")
    out = open(tmp_path / "stdout.txt", "wb")
    p = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "kvmvm", "firecracker",
                          "--api-sock", sock], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
    wait_socket(sock, p)
    c = FcClient(sock)
    c.proc, c.out, c.ns = p, tmp_path / "stdout.txt", netns
    yield c
    c.close()
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    assert not os.path.exists(sock)


def _configure(fc, tiny_images, args: str, **limiters):
    fc.ok("PUT", "/boot-source", {"kernel_image_path": str(tiny_images / "virtio-net-bench.elf"),
                                  "boot_args": args})
    fc.ok("PUT", "/network-interfaces/eth0", dict({"iface_id": "eth0", "host_dev_name": "ktap0",
                                                   "guest_mac": GUEST_MAC}, **limiters))


def test_tx_rate_limiter(fc_in_ns, tiny_images):
    # 10 frames at once, then 20 per second: 40 frames need at least 1.5 s
    _configure(fc_in_ns, tiny_images, "count=40 size=100 ms=20000",
               tx_rate_limiter={"ops": {"size": 10, "refill_time": 500}})
    t = time.monotonic()
    fc_in_ns.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    assert fc_in_ns.proc.wait(30) == 0, fc_in_ns.proc.stderr.read()
    elapsed = time.monotonic() - t
    assert "net-bench: sent 40 frames" in fc_in_ns.out.read_text()
    assert elapsed >= 1.4, f"40 rate-limited frames took only {elapsed:.2f} s"


def _rx(fc, tiny_images, limiter: dict):
    s = packet_socket_in(fc.ns, "ktap0")
    s.settimeout(20)
    _configure(fc, tiny_images, "rx count=15 ms=20000", rx_rate_limiter=limiter)
    fc.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    while True:      # the guest's broadcast hello: it is ready to receive
        f = s.recv(2048)
        if f[14:25] == b"kvmvm-hello":
            break
    mac = bytes.fromhex(GUEST_MAC.replace(":", ""))
    frame = mac + b"\x02\x00\x00\x00\x00\x01" + ETH_P.to_bytes(2, "big") + b"bench".ljust(86, b"\0")
    for _ in range(15):
        s.send(frame)
    return s, time.monotonic()


def test_rx_rate_limiter(fc_in_ns, tiny_images):
    # 5 frames at once, then 5 per second: 15 frames need at least 2 s
    s, t = _rx(fc_in_ns, tiny_images, {"ops": {"size": 5, "refill_time": 1000}})
    try:
        assert fc_in_ns.proc.wait(20) == 0, fc_in_ns.out.read_text()
    finally:
        s.close()
    elapsed = time.monotonic() - t
    assert "net-bench: received 15 frames" in fc_in_ns.out.read_text()
    assert elapsed >= 1.8, f"15 rate-limited frames arrived in {elapsed:.2f} s"


def test_rx_rate_limiter_lifted_by_patch(fc_in_ns, tiny_images):
    # one frame, then one per 100 s, until the PATCH lifts the limit
    s, t = _rx(fc_in_ns, tiny_images, {"ops": {"size": 1, "refill_time": 100000}})
    try:
        time.sleep(1.0)
        assert fc_in_ns.proc.poll() is None, fc_in_ns.out.read_text()
        fc_in_ns.ok("PATCH", "/network-interfaces/eth0",
                    {"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 0, "refill_time": 0}}})
        assert fc_in_ns.proc.wait(20) == 0, fc_in_ns.out.read_text()
    finally:
        s.close()
    assert "net-bench: received 15 frames" in fc_in_ns.out.read_text()
