"""atheris harness: the host side of the agent protocol (kvmvm/agent/protocol.py and the
frame handling of kvmvm/agent/session.py; docs/agent-protocol.md) against whatever bytes a
guest's agent may send. A Session with open exec, put, get and file-system (ls, stat) streams is fed the input in
chunks, as the socket would deliver it; the host then consumes output and replies as its
owners do (the Sandbox API's reading of ls and stat answers included). ProtocolError and AgentError are the only ways a bad peer may end a session;
any other exception is a crash.

Input: byte 0: bit 0 = the handshake is already done, bit 1 = records, bits 2-7 = n, chunk
size (n + 1)^2; the rest: the bytes from the guest, or with bit 1 records of
[stream u8][type u8][channel u8][length u16 BE][payload] that the harness frames with a
correct length (so mutations reach the JSON and the stream logic, not only the framing).

    .venv/bin/python tests/fuzz/fuzz_agent.py [libFuzzer flags] [CORPUS...]   (scripts/fuzz.sh)
"""
from __future__ import annotations

import socket
import sys

import atheris

with atheris.instrument_imports(include=["kvmvm"]):
    from kvmvm.agent import protocol as p
    from kvmvm.agent.session import AgentError, Session
    from kvmvm.sandbox import files

_A, _B = socket.socketpair()     # never read or written: frames go in through the decoder


def session(hello_done: bool) -> Session:
    s = Session(_A)
    if hello_done:
        s.hello = {"version": p.VERSION}
    s.exec(["/bin/true"], stdin=True)      # stream 1
    s.put_request("/tmp/f")                 # stream 2
    s.get_request("/tmp/g")                 # stream 3
    s.fs_request("ls", "/tmp")              # stream 4
    s.fs_request("stat", "/tmp/h")          # stream 5
    s.wbuf.clear()
    return s


def finished(st) -> None:
    """What the Sandbox API makes of a finished file-system stream."""
    if st.result.get("op") == "error":
        files._file_error(st.result, "op")
    elif st.id == 4:
        files.entries_from("/tmp", st.result)
    elif st.id == 5:
        files.info_from("/tmp/h", st.result)


def consume(s: Session, open_streams: dict) -> None:
    """What the host does with what arrived: drain output (granting credit), feed stdin,
    read exit statuses, file-system answers and stream-0 replies."""
    for sid, st in list(open_streams.items()):
        if st.done:
            finished(st)
            del open_streams[sid]
    for st in list(s.streams.values()):
        for chan in (p.STDOUT, p.STDERR):
            if st.out[chan]:
                st.consumed(chan, len(st.take(chan)))
        if st.kind == "exec" and not st.done and st.stdin_room():
            st.write(b"x" * 100)
        st.exit_status  # noqa: B018 (a property that reads the result)
    while s.replies:
        s.reply(s.replies.popleft())
    s.wbuf.clear()


def frames(rec: bytes) -> bytes:
    out = bytearray()
    off = 0
    while off + 5 <= len(rec):
        sid, ftype, chan, n = rec[off], rec[off + 1], rec[off + 2], int.from_bytes(rec[off + 3:off + 5], "big")
        payload = rec[off + 5:off + 5 + n]
        off += 5 + n
        out += p.HDR.pack(sid, ftype, chan, 0, len(payload)) + payload
    return bytes(out)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    s = session(bool(data[0] & 1))
    open_streams = dict(s.streams)
    chunk = ((data[0] >> 2) + 1) ** 2      # 1 .. 4096 bytes per read
    body = frames(data[1:]) if data[0] & 2 else data[1:]
    try:
        for off in range(0, len(body), chunk):
            got = s.dec.feed(body[off:off + chunk])
            for f in got:
                s._dispatch(f)
            if got:
                consume(s, open_streams)
    except (p.ProtocolError, AgentError):
        pass


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
