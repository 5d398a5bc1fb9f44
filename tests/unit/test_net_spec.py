"""--net specs for the passt and stream backends (parsing only)."""

from __future__ import annotations

import socket

import pytest

from kvmvm.devices.virtio.net import parse
from kvmvm.errors import ConfigError
from kvmvm.net.passt import PasstOptions, check_port_spec


def test_user_specs():
    n = parse("user", 0)
    assert n.backend == "user" and n.tcp == () and n.mac == bytes.fromhex("525400123456")
    n = parse("passt,mac=52:54:00:00:00:07,tcp=8080:80,tcp=2222:22,udp=5353:53", 1)
    assert (n.backend, n.tcp, n.udp, n.mac.hex()) == ("user", ("8080:80", "2222:22"), ("5353:53",), "525400000007")


@pytest.mark.parametrize("spec,why", [
    ("user,tcp=0", "out of range"), ("user,tcp=8080:99999", "out of range"), ("user,tcp=a:b", "expected"),
    ("user,mac=01:00:00:00:00:01", "multicast"), ("user,mac=1,mac=2", "mac must look like"),
    ("user,what=1", "unknown"), ("user,tcp", "unknown"),
])
def test_bad_user_specs(spec, why):
    with pytest.raises(ConfigError, match=why):
        parse(spec)


def test_port_forms():
    for ok in ("80", "8080:80", "8000-8010:9000-9010", "127.0.0.1/8080:80", "::1/8080"):
        assert check_port_spec(ok) == ok


def test_passt_argv():
    o = PasstOptions(tcp=["8080:80"], udp=["53"], address="10.0.2.15", gateway="10.0.2.2", dns=["1.1.1.1"])
    assert o.argv() == ["--mtu", "1500", "-t", "8080:80", "-u", "53", "-a", "10.0.2.15", "-g", "10.0.2.2",
                        "-D", "1.1.1.1"]


def test_fd_spec(tmp_path):
    a, b = socket.socketpair()
    with a, b:
        n = parse(f"fd={b.fileno()}")
        assert n.backend == "fd" and n.fd == b.fileno()
    with open(tmp_path / "f", "w") as f:
        with pytest.raises(ConfigError, match="not a socket"):
            parse(f"fd={f.fileno()}")
