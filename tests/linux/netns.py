"""Network namespaces for Linux-tier tests: each test gets its own, removed on every exit path.

``tap_netns("ktap0")``: a namespace whose TAP device ``ktap0`` is the host side of the guest's
link, 10.77.0.1/24 (the guest takes 10.77.0.2). ``routed_netns()``: a namespace with a dummy
``eth0`` and a default route, so user-mode networking (passt) finds an uplink to copy.
Both yield the command prefix that runs a program inside (``ip netns exec NAME``).
"""
from __future__ import annotations

import contextlib
import subprocess
import uuid
from typing import Iterator, Sequence

HOST_ADDR = "10.77.0.1"


@contextlib.contextmanager
def netns(setup: Sequence[Sequence[str]], prefix: str = "kvmvm") -> Iterator[list[str]]:
    """A fresh namespace with loopback up and ``setup`` (``ip ...`` commands) run inside it."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ns = ["ip", "netns", "exec", name]
        for c in (["ip", "link", "set", "lo", "up"], *setup):
            subprocess.run([*ns, *c], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", name])


def tap_netns(tap: str = "ktap0", prefix: str = "kvmvm"):
    return netns([["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
                  ["ip", "addr", "add", f"{HOST_ADDR}/24", "dev", tap],
                  ["ip", "link", "set", tap, "up"]], prefix)


def routed_netns(prefix: str = "kvmvm-run"):
    return netns([["ip", "link", "add", "eth0", "type", "dummy"],
                  ["ip", "addr", "add", "192.0.2.2/24", "dev", "eth0"],
                  ["ip", "link", "set", "eth0", "up"],
                  ["ip", "route", "add", "default", "via", "192.0.2.1"]], prefix)


def pcap_summary(path, limit: int = 60) -> list[str]:
    """One line per frame of a pcap file (passt's --pcap): ARP, IPv4 TCP/UDP with flags and
    sequence numbers; the last `limit` lines. For failure messages."""
    import socket
    import struct
    from pathlib import Path

    d = Path(path).read_bytes()
    out, off = [], 24
    while off + 16 <= len(d):
        ts, tu, incl, _ = struct.unpack("<IIII", d[off:off + 16])
        f = d[off + 16:off + 16 + incl]
        off += 16 + incl
        t = f"{ts % 1000}.{tu // 1000:03d}"
        if len(f) >= 34 and f[12:14] == b"\x08\x00":
            ip = f[14:]
            ihl = (ip[0] & 15) * 4
            s, dd = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
            if ip[9] == 6 and len(ip) >= ihl + 20:
                sp, dp, seq, ack, fl = struct.unpack(">HHIIH", ip[ihl:ihl + 14])
                names = "".join(c for c, b in zip("FSRPA", (1, 2, 4, 8, 16)) if fl & b)
                plen = len(ip) - ihl - (fl >> 12) * 4
                out.append(f"{t} {s}:{sp} > {dd}:{dp} [{names}] seq={seq} ack={ack} len={plen}")
            elif ip[9] == 17 and len(ip) >= ihl + 4:
                sp, dp = struct.unpack(">HH", ip[ihl:ihl + 4])
                out.append(f"{t} UDP {s}:{sp} > {dd}:{dp}")
            else:
                out.append(f"{t} IP proto {ip[9]} {s} > {dd}")
        elif len(f) >= 42 and f[12:14] == b"\x08\x06":
            out.append(f"{t} ARP op {f[21]} {socket.inet_ntoa(f[28:32])} -> {socket.inet_ntoa(f[38:42])}")
        else:
            out.append(f"{t} ethertype {f[12:14].hex()} len {len(f)}")
    return out[-limit:]
