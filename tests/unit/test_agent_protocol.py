"""The agent protocol's host side: framing both ways, limits, and a guest that breaks the
rules (each ends the session with one ProtocolError line, never a crash or a hang)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from kvmvm.agent import protocol as p
from kvmvm.agent.protocol import ProtocolError
from kvmvm.agent.session import Session


def test_roundtrip_split_at_every_byte():
    frames = [p.encode_json(0, p.HELLO, {"version": 1}), p.encode(7, p.DATA, p.STDOUT, b"x" * 1000),
              p.encode(7, p.EOF, p.STDERR), p.encode_credit(7, p.STDIN, 4096),
              p.encode_json(7, p.CONTROL, {"op": "exit", "code": 3})]
    blob = b"".join(frames)
    for cut in range(len(blob) + 1):
        d = p.Decoder()
        got = d.feed(blob[:cut]) + d.feed(blob[cut:])
        assert [(f.stream, f.type, f.chan, len(f.payload)) for f in got] == [
            (0, p.HELLO, 0, 13), (7, p.DATA, 1, 1000), (7, p.EOF, 2, 0), (7, p.CREDIT, 0, 4), (7, p.CONTROL, 0, 22)]
        assert d.pending() == 0
    assert got[3].credit() == 4096 and got[4].json() == {"op": "exit", "code": 3}


def test_header_layout_is_big_endian():
    assert p.encode(0x01020304, p.DATA, 2, b"ab") == bytes([1, 2, 3, 4, 3, 2, 0, 0, 0, 0, 0, 2]) + b"ab"


@pytest.mark.parametrize("header,why", [
    (p.HDR.pack(1, p.DATA, 0, 1, 0), "reserved"),
    (p.HDR.pack(1, 9, 0, 0, 0), "unknown frame type"),
    (p.HDR.pack(1, p.DATA, 3, 0, 0), "unknown channel"),
    (p.HDR.pack(1, p.DATA, 1, 0, p.MAX_PAYLOAD + 1), "longer than the limit"),
    (p.HDR.pack(1, p.EOF, 1, 0, 1), "EOF frame with a payload"),
    (p.HDR.pack(1, p.CREDIT, 0, 0, 8), "not 4 bytes"),
    (p.HDR.pack(1, p.CONTROL, 0, 0, 1), "malformed control"),
    (p.HDR.pack(1, p.CONTROL, 1, 0, 10), "malformed control"),
])
def test_malformed_headers_are_refused_before_the_payload(header, why):
    with pytest.raises(ProtocolError, match=why):
        p.Decoder().feed(header)      # no payload needed: a 4 GiB length never gets buffered


def test_encode_refuses_oversized_payloads():
    with pytest.raises(ValueError):
        p.encode(1, p.DATA, 0, b"x" * (p.MAX_PAYLOAD + 1))


def test_control_payload_must_be_a_json_object():
    with pytest.raises(ProtocolError, match="not JSON"):
        p.Frame(0, p.CONTROL, 0, b"{nope").json()
    with pytest.raises(ProtocolError, match="not a JSON object"):
        p.Frame(0, p.CONTROL, 0, b"[1, 2]").json()



@pytest.mark.parametrize("payload", [b"[" * 5000, b'{"a":' * 5000, b"[" * 100000])
def test_control_payload_nested_too_deep_is_not_json(payload):
    """Regression (atheris, tests/fuzz/fuzz_agent.py): json's RecursionError escaped."""
    with pytest.raises(ProtocolError, match="not JSON"):
        p.Frame(0, p.CONTROL, 0, payload).json()


@pytest.mark.parametrize("code,want", [("x", 0), ([1], 0), (1e999, 0), (True, 0), (-1, 0),
                                       (300, 0), (None, 0), (5, 5)])
def test_error_reply_with_a_bad_code_is_an_agent_error(code, want):
    """Regression (atheris): int(code) on a guest-chosen value raised ValueError/TypeError/
    OverflowError instead of AgentError."""
    from kvmvm.agent.session import AgentError

    with pytest.raises(AgentError) as ei:
        Session.reply({"op": "error", "reason": "r" * 5000, "code": code})
    assert ei.value.code == want and len(ei.value.reason) == 1000


# --- a scripted guest on the other end of a socketpair ---

class FakeGuest:
    def __init__(self):
        self.host, self.guest = socket.socketpair()
        self.session = Session(self.host)
        self.dec = p.Decoder()

    def send(self, *frames: bytes) -> None:
        data = memoryview(b"".join(frames))
        self.guest.settimeout(0)
        while data:
            try:
                data = data[self.guest.send(data):]
            except BlockingIOError:
                self.session.pump(0.05)     # the host reads while we write

    def hello(self) -> None:
        self.send(p.encode_json(0, p.HELLO, {"version": 1, "window": p.WINDOW}))
        self.session.handshake(5)
        assert self.frames()[0].type == p.HELLO

    def frames(self) -> list:
        """Frames the host sent (at least one, within 3 s); the host writes meanwhile."""
        out = []
        deadline = time.monotonic() + 3
        self.guest.settimeout(0)
        while not out and time.monotonic() < deadline:
            if self.session.wants_write:
                self.session.on_writable()
            try:
                out = self.dec.feed(self.guest.recv(1 << 20))
            except BlockingIOError:
                time.sleep(0.005)
        return out

    def pump_until_error(self) -> str:
        with pytest.raises(ProtocolError) as ei:
            for _ in range(50):
                self.session.pump(0.1)
        return str(ei.value)


def test_first_frame_must_be_hello():
    g = FakeGuest()
    g.send(p.encode_json(0, p.CONTROL, {"op": "ok"}))
    assert "first frame is not HELLO" in g.pump_until_error()


def test_wrong_version_is_refused():
    g = FakeGuest()
    g.send(p.encode_json(0, p.HELLO, {"version": 2}))
    assert "version 2" in g.pump_until_error()


def test_output_beyond_credit_ends_the_session():
    g = FakeGuest()
    g.hello()
    st = g.session.exec(["true"])
    assert json.loads(g.frames()[0].payload)["op"] == "exec"
    chunk = b"y" * p.DATA_CHUNK
    g.send(*[p.encode(st.id, p.DATA, p.STDOUT, chunk)] * (p.WINDOW // p.DATA_CHUNK))
    for _ in range(20):
        g.session.pump(0.05)
    assert len(st.out[p.STDOUT]) == p.WINDOW          # exactly the window: fine
    g.send(p.encode(st.id, p.DATA, p.STDOUT, b"z"))     # one byte more: not fine
    assert "more output than its credit" in g.pump_until_error()


def test_consumed_output_gives_credit_back():
    g = FakeGuest()
    g.hello()
    st = g.session.exec(["true"])
    g.frames()
    g.send(p.encode(st.id, p.DATA, p.STDOUT, b"a" * 100))
    while not st.out[p.STDOUT]:
        g.session.pump(0.1)
    assert st.take(p.STDOUT) == b"a" * 100
    g.session.pump(0.1)
    (f,) = g.frames()
    assert (f.type, f.chan, f.credit()) == (p.CREDIT, p.STDOUT, 100)


def test_stdin_never_exceeds_the_guest_credit():
    g = FakeGuest()
    g.hello()
    st = g.session.exec(["cat"], stdin=True)
    st.write(b"s" * (p.WINDOW + 5000))
    st.close_stdin()
    sent = 0
    frames = []
    while sent < p.WINDOW:
        g.session.pump(0.1)
        for f in g.frames():
            frames.append(f)
            if f.type == p.DATA:
                sent += len(f.payload)
    g.session.pump(0.1)
    assert sent == p.WINDOW and not any(f.type == p.EOF for f in frames)
    g.send(p.encode_credit(st.id, p.STDIN, 5000))
    rest = []
    while sum(len(f.payload) for f in rest if f.type == p.DATA) < 5000 or not any(f.type == p.EOF for f in rest):
        g.session.pump(0.1)
        rest += g.frames()
    assert [f.type for f in rest][-1] == p.EOF


@pytest.mark.parametrize("frame,why", [
    (p.encode(99, p.DATA, p.STDOUT, b"x"), "unknown stream"),
    (p.encode_json(1, p.CONTROL, {"op": "exit", "code": 999}), "bad exit code"),
    (p.encode_json(1, p.CONTROL, {"op": "exit", "signal": "KILL"}), "bad exit signal"),
    (p.encode_json(1, p.CONTROL, {"op": "error"}), "without a reason"),
    (p.encode_json(1, p.CONTROL, {"op": "surprise"}), "unexpected 'surprise'"),
    (p.encode(1, p.DATA, p.STDIN, b"x"), "input channel"),
    (p.encode_credit(1, p.STDOUT, 10), "credit for an output channel"),
    (p.encode_json(0, p.HELLO, {"version": 1}), "second HELLO"),
    (p.encode_credit(1, p.STDIN, 0xFFFFFFFF), "overflows"),
])
def test_misbehaving_guest_ends_the_session_with_one_line(frame, why):
    g = FakeGuest()
    g.hello()
    g.session.exec(["true"])
    g.send(frame)
    msg = g.pump_until_error()
    assert why in msg and "\n" not in msg


def test_guest_closing_the_connection_is_an_error():
    g = FakeGuest()
    g.hello()
    g.guest.close()
    assert "closed the connection" in g.pump_until_error()
