"""Accepting the guest agent's connection (kvmvm/agent/accept.py): a connection that ends
before its HELLO is dropped and the next one taken, as a guest whose connect() gave up
(Linux: after 2 s of guest time, which a loaded host exceeds) resets the attempt the host
completed late and connects again. Once, under 50 threads of sandboxes in the emulated
test host, that first connection was the one a sandbox took: "agent closed the connection".
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from kvmvm.agent.accept import AgentTimeout, accept_agent
from kvmvm.agent.initramfs import agent_binary
from kvmvm.agent.protocol import ProtocolError
from tests.integration.conftest import KVMVM, ROOT, TINY_OUT

pytestmark = pytest.mark.host


def _listener(path: str) -> socket.socket:
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    lst.bind(path)
    lst.listen(1)
    return lst


def test_a_guest_that_reset_its_first_attempt_is_accepted_on_its_second(tiny_images, kvm_ok, tmp_path):
    """The real vsock device: the guest answers the RESPONSE of its first REQUEST with RST
    (the host's end of that connection closes before any byte), connects again and says
    HELLO there; the host takes the second connection and the session works."""
    uds = str(tmp_path / "v")
    lst = _listener(uds + "_1024")
    vm = subprocess.Popen([*KVMVM, "boot", "--kernel", str(TINY_OUT / "vsock-late.elf"), "--vsock",
                           f"cid=7,uds={uds}", "--timeout", "40"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def alive():
            assert vm.poll() is None, vm.communicate()

        session, dropped = accept_agent(lst, 30, alive)
        assert dropped == 1
        assert session.hello["agent"] == "vsock-late"
        assert session.request("ping", timeout=10) == {"op": "ok"}
        session.close()
        out, err = vm.communicate(timeout=40)
    finally:
        lst.close()
        if vm.poll() is None:
            vm.kill()
            vm.wait()
    assert vm.returncode == 0, out + err
    assert "vsock-late: first attempt reset" in out and "vsock-late: ok" in out, out


def test_the_real_agent_on_the_connection_after_one_that_closed(tmp_path):
    """Two connections end before a HELLO (one closed at once, one after connecting with
    nothing sent); the agent (`kvmvm-agent --fd`) on the third is the session."""
    path = str(tmp_path / "l")
    lst = _listener(path)
    early = [socket.socket(socket.AF_UNIX) for _ in range(2)]
    agent_sock = socket.socket(socket.AF_UNIX)
    proc = None
    try:
        early[0].connect(path)
        early[0].close()
        early[1].connect(path)
        t = time.monotonic()

        def second_and_agent():
            nonlocal proc
            if proc is None and time.monotonic() - t > 0.3:
                early[1].close()
                agent_sock.connect(path)
                proc = subprocess.Popen([str(agent_binary()), "--fd", str(agent_sock.fileno())],
                                        pass_fds=(agent_sock.fileno(),), stderr=subprocess.PIPE)
                agent_sock.close()

        session, dropped = accept_agent(lst, 20, second_and_agent)
        assert dropped == 2
        assert session.hello["agent"].startswith("kvmvm-agent/")
        assert session.request("ping", timeout=10) == {"op": "ok"}
        assert session.run(["/bin/echo", "hi"], timeout=10)[:2] == (0, b"hi\n")
        session.close()
        assert proc.wait(10) == 0
    finally:
        lst.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_connection_that_breaks_the_protocol_before_hello_is_an_error(tmp_path):
    """Only a connection that ends before its HELLO is dropped: garbage is a ProtocolError."""
    path = str(tmp_path / "l")
    lst = _listener(path)
    c = socket.socket(socket.AF_UNIX)
    try:
        c.connect(path)
        c.sendall(b"\x00\x00\x00\x00\x09\x00\x00\x00\x00\x00\x00\x02{}")     # frame type 9
        with pytest.raises(ProtocolError, match="unknown frame type"):
            accept_agent(lst, 10)
    finally:
        c.close()
        lst.close()


@pytest.mark.parametrize("connect", [False, True])
def test_no_hello_in_time_is_a_timeout_that_names_the_step(tmp_path, connect):
    """The deadline holds either way; a connection still waiting for its HELLO is closed."""
    path = str(tmp_path / "l")
    lst = _listener(path)
    c = socket.socket(socket.AF_UNIX)
    try:
        if connect:
            c.connect(path)
        t = time.monotonic()
        with pytest.raises(AgentTimeout, match="did not say hello" if connect else "did not connect"):
            accept_agent(lst, 0.5)
        assert time.monotonic() - t < 3
        if connect:
            c.settimeout(5)
            assert c.recv(1) == b""
    finally:
        c.close()
        lst.close()
