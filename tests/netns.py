"""Network namespaces for tests: each test gets its own, removed on every exit path.

``tap_netns("ktap0")``: a namespace whose TAP device ``ktap0`` is the host side of the guest's
link, 10.77.0.1/24 (the guest takes 10.77.0.2). ``routed_netns()``: a namespace with a dummy
``eth0`` and a default route, so user-mode networking (passt) finds an uplink to copy;
``netns(veth_uplink(ADDR, GW))``: the same with a veth pair (v0 addressed, v1 its peer).
All yield the command prefix that runs a program inside (``ip netns exec NAME``); its last
item is the namespace's name.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from pathlib import Path
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



def veth_uplink(addr: str, gateway: str) -> list[list[str]]:
    """``netns`` set-up: passt's uplink as a veth pair, v0 with ``addr`` (CIDR), and a default
    route via ``gateway`` (passt copies the addresses of the interface with the default route)."""
    return [["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            ["ip", "addr", "add", addr, "dev", "v0"],
            ["ip", "link", "set", "v0", "up"],
            ["ip", "link", "set", "v1", "up"],
            ["ip", "route", "add", "default", "via", gateway]]


def passt_in(ns: str) -> list[int]:
    """pids of the passt processes in network namespace ``ns`` (its name)."""
    ino = os.stat(f"/run/netns/{ns}").st_ino
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().startswith("passt") and os.stat(d / "ns" / "net").st_ino == ino:
                out.append(int(d.name))
        except OSError:
            pass
    return out
