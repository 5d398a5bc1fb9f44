"""The host side of one agent connection: hello, requests, execs and file transfers.

A Session is driven by its owner's event loop (`on_readable`, `on_writable`,
`wants_write`) or by `pump()` for blocking helpers. Each exec or file transfer is a stream;
many may be open at once. Every byte stream is flow-controlled by credits both ways: we
never send the guest more stdin than it granted, and a guest that sends more output than we
granted, or anything malformed, ends the session with a ProtocolError (one line).
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections import deque

from kvmvm.agent import protocol as p
from kvmvm.agent.protocol import ProtocolError
from kvmvm.errors import KvmvmError

CREDIT_BATCH = 32 * 1024
FS_OPS = ("ls", "stat", "mkdir", "rm", "mv")
STDIN_HIGH = 256 * 1024     # buffer at most this much stdin host-side before pausing reads


class AgentError(KvmvmError):
    """The agent refused or failed a request; `code` is 126/127 for exec failures."""

    def __init__(self, reason: str, code: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.code = code


class Stream:
    """One exec or file transfer: output buffers with their credit, stdin with ours."""

    def __init__(self, session: "Session", sid: int, kind: str):
        self.session, self.id, self.kind = session, sid, kind
        self.out = {p.STDOUT: bytearray(), p.STDERR: bytearray()}
        self.eof = {p.STDOUT: False, p.STDERR: False}
        self.allowed = {p.STDOUT: p.WINDOW, p.STDERR: p.WINDOW}   # what the guest may send
        self.ungranted = {p.STDOUT: 0, p.STDERR: 0}
        self.in_credit = p.WINDOW                                  # what we may send
        self.stdin = bytearray()
        self.stdin_eof = False
        self.stdin_eof_sent = False
        self.done = False
        self.result: dict | None = None      # the final control message (exit / ok / error)
        self.started: dict | None = None

    # --- output (guest -> host) ---
    def consumed(self, chan: int, n: int) -> None:
        """The owner took n bytes of chan's buffer: drop them and give the guest credit."""
        del self.out[chan][:n]
        self.ungranted[chan] += n
        if self.ungranted[chan] >= CREDIT_BATCH or not self.out[chan]:
            if not self.done and self.ungranted[chan]:
                self.session._send(p.encode_credit(self.id, chan, self.ungranted[chan]))
                self.allowed[chan] += self.ungranted[chan]
            self.ungranted[chan] = 0

    def take(self, chan: int) -> bytes:
        data = bytes(self.out[chan])
        self.consumed(chan, len(data))
        return data

    # --- input (host -> guest) ---
    def write(self, data: bytes) -> None:
        if self.stdin_eof:
            raise ValueError("stdin already closed")
        self.stdin += data
        self.session._fill(self)

    def close_stdin(self) -> None:
        self.stdin_eof = True
        self.session._fill(self)

    def stdin_room(self) -> int:
        return max(0, STDIN_HIGH - len(self.stdin))

    # --- control ---
    def signal(self, sig: int, group: bool = False) -> None:
        """Signal the process, or with group its whole session (its children too)."""
        if not self.done:
            msg = {"op": "signal", "signal": int(sig)}
            if group:
                msg["group"] = True
            self.session._send(p.encode_json(self.id, p.CONTROL, msg))

    def resize(self, rows: int, cols: int) -> None:
        if not self.done:
            self.session._send(p.encode_json(self.id, p.CONTROL, {"op": "resize", "rows": rows, "cols": cols}))

    @property
    def exit_status(self) -> int | None:
        """podman's convention: the code, 128+N for signal N, the agent's code on errors."""
        r = self.result
        if r is None:
            return None
        if r.get("op") == "exit":
            return 128 + r["signal"] if "signal" in r else r["code"]
        if r.get("op") == "error":
            return r.get("code") or 125
        return 0


def _int(v, lo: int, hi: int, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ProtocolError(f"agent sent a bad {what}")
    return v


class Session:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        sock.setblocking(False)
        self.dec = p.Decoder()
        self.wbuf = bytearray()
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.hello: dict | None = None
        self.replies: deque = deque()
        self.closed = False
        self.t_hello_ns = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def wants_write(self) -> bool:
        return bool(self.wbuf)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()

    # --- wire ---
    def _send(self, frame: bytes) -> None:
        self.wbuf += frame

    def _fill(self, st: Stream) -> None:
        """Move stdin into DATA frames as far as the guest's credit allows."""
        while st.stdin and st.in_credit > 0 and not st.done:
            n = min(len(st.stdin), st.in_credit, p.DATA_CHUNK)
            self._send(p.encode(st.id, p.DATA, p.STDIN, bytes(st.stdin[:n])))
            del st.stdin[:n]
            st.in_credit -= n
        if st.stdin_eof and not st.stdin and not st.stdin_eof_sent and not st.done:
            self._send(p.encode(st.id, p.EOF, p.STDIN))
            st.stdin_eof_sent = True

    def on_writable(self) -> None:
        try:
            n = self.sock.send(self.wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            raise ProtocolError(f"agent connection lost: {e.strerror}") from None
        del self.wbuf[:n]

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(1 << 18)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            raise ProtocolError(f"agent connection lost: {e.strerror}") from None
        if not data:
            raise ProtocolError("agent closed the connection")
        for f in self.dec.feed(data):
            self._dispatch(f)

    def _dispatch(self, f: p.Frame) -> None:
        if self.hello is None:
            if f.type != p.HELLO:
                raise ProtocolError("agent's first frame is not HELLO")
            h = f.json()
            if h.get("version") != p.VERSION:
                raise ProtocolError(f"agent speaks protocol version {h.get('version')!r}, kvmvm speaks {p.VERSION}")
            self.hello = h
            self.t_hello_ns = time.monotonic_ns()
            self._send(p.encode_json(0, p.HELLO, {"version": p.VERSION, "window": p.WINDOW}))
            return
        if f.type == p.HELLO:
            raise ProtocolError("agent sent a second HELLO")
        if f.stream == 0:
            if f.type != p.CONTROL:
                raise ProtocolError("agent sent data on stream 0")
            if len(self.replies) > 64:
                raise ProtocolError("agent sent replies nobody asked for")
            self.replies.append(f.json())
            return
        st = self.streams.get(f.stream)
        if st is None:
            raise ProtocolError(f"agent sent a frame for unknown stream {f.stream}")
        if f.type == p.CONTROL:
            msg = f.json()
            op = msg.get("op")
            if op == "started" and st.kind == "exec" and st.started is None:
                _int(msg.get("pid"), 1, 1 << 31, "pid")
                st.started = msg
                st.t_started_ns = time.monotonic_ns()
            elif op in ("exit", "ok", "error"):
                if op == "exit":
                    if "signal" in msg:
                        _int(msg["signal"], 1, 127, "exit signal")
                    else:
                        _int(msg.get("code"), 0, 255, "exit code")
                if op == "error":
                    if not isinstance(msg.get("reason"), str):
                        raise ProtocolError("agent sent an error without a reason")
                    if "code" in msg:
                        _int(msg["code"], 1, 255, "error code")
                st.result = msg
                st.done = True
                st.t_done_ns = time.monotonic_ns()
                del self.streams[st.id]
            else:
                raise ProtocolError(f"agent sent an unexpected {op!r} message")
        elif f.type == p.DATA:
            if f.chan == p.STDIN:
                raise ProtocolError("agent sent data on the input channel")
            if st.eof[f.chan]:
                raise ProtocolError("agent sent data after EOF")
            if len(f.payload) > st.allowed[f.chan]:
                raise ProtocolError("agent sent more output than its credit")
            st.allowed[f.chan] -= len(f.payload)
            st.out[f.chan] += f.payload
        elif f.type == p.EOF:
            if f.chan == p.STDIN:
                raise ProtocolError("agent sent EOF on the input channel")
            st.eof[f.chan] = True
        elif f.type == p.CREDIT:
            if f.chan != p.STDIN:
                raise ProtocolError("agent sent credit for an output channel")
            st.in_credit += f.credit()
            if st.in_credit > 1 << 31:
                raise ProtocolError("agent's credit overflows")
            self._fill(st)

    # --- blocking helpers ---
    def pump(self, timeout: float | None) -> None:
        """Wait up to `timeout` for the socket, then read/write what it allows."""
        sel = selectors.PollSelector()
        try:
            ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.wbuf else 0)
            sel.register(self.sock, ev)
            for _, mask in sel.select(timeout):
                if mask & selectors.EVENT_WRITE:
                    self.on_writable()
                if mask & selectors.EVENT_READ:
                    self.on_readable()
        finally:
            sel.close()

    def _wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                raise KvmvmError(f"the guest agent did not answer {what} within {timeout:g} s")
            self.pump(min(left, 0.5))
        while self.wbuf:     # what we queued on the way (credits, hello) goes out too
            self.pump(0.5)

    def handshake(self, timeout: float = 30.0) -> dict:
        self._wait(lambda: self.hello is not None, timeout, "hello")
        return self.hello

    def request(self, op: str, timeout: float = 60.0, **fields) -> dict:
        """A stream-0 request (setup, ping, poweroff): waits for ok, raises AgentError."""
        self._send(p.encode_json(0, p.CONTROL, {"op": op, **fields}))
        self._wait(lambda: bool(self.replies), timeout, op)
        return self.reply(self.replies.popleft())

    @staticmethod
    def reply(r: dict) -> dict:
        """A stream-0 reply as request() returns it; an error reply raises AgentError."""
        if r.get("op") == "error":
            code = r.get("code")
            if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
                code = 0        # the guest's to choose, but only as a small number
            raise AgentError(str(r.get("reason", "?"))[:1000], code)
        return r

    def _new_stream(self, kind: str) -> Stream:
        sid = self.next_id
        self.next_id = self.next_id % 0xFFFFFFFF + 1
        st = self.streams[sid] = Stream(self, sid, kind)
        return st

    def exec(self, argv: list[str], *, env: list[str] | None = None, cwd: str = "/",
             user: str = "", tty: bool = False, rows: int = 24, cols: int = 80,
             stdin: bool = False, main: bool = False, umask: int = 0o022,
             rlimits: list[dict] | None = None) -> Stream:
        """Start a process; its stream fills as the session is pumped."""
        st = self._new_stream("exec")
        msg = {"op": "exec", "argv": list(argv), "env": list(env or []), "cwd": cwd, "user": user,
               "tty": bool(tty), "rows": rows, "cols": cols, "stdin": bool(stdin),
               "main": bool(main), "umask": umask}
        if rlimits:
            msg["rlimits"] = rlimits
        frame = p.encode_json(st.id, p.CONTROL, msg)   # ValueError when argv+env are too big
        self._send(frame)
        return st

    def run(self, argv: list[str], input: bytes = b"", timeout: float = 60.0, **kw) -> tuple[int, bytes, bytes]:
        """Run a process to its end: (status, stdout, stderr)."""
        st = self.exec(argv, stdin=True, **kw)
        st.write(input)
        st.close_stdin()
        out, err = bytearray(), bytearray()

        def drained():
            out.extend(st.take(p.STDOUT))
            err.extend(st.take(p.STDERR))
            return st.done

        self._wait(drained, timeout, f"exec {argv[:1]!r}")
        if st.result.get("op") == "error":
            raise AgentError(st.result["reason"], st.result.get("code", 0))
        return st.exit_status, bytes(out), bytes(err)

    def put_request(self, path: str, mode: int = 0o644, parents: bool = False) -> Stream:
        """Start writing a file: feed it with write()/close_stdin(); ends {"op":"ok","size"}."""
        st = self._new_stream("put")
        self._send(p.encode_json(st.id, p.CONTROL, {"op": "put", "path": path, "mode": mode, "parents": parents}))
        return st

    def get_request(self, path: str) -> Stream:
        """Start reading a file: its bytes arrive on the stream's stdout."""
        st = self._new_stream("get")
        self._send(p.encode_json(st.id, p.CONTROL, {"op": "get", "path": path}))
        return st

    def put_file(self, path: str, data: bytes, mode: int = 0o644, parents: bool = False,
                 timeout: float = 60.0) -> int:
        st = self.put_request(path, mode, parents)
        st.write(data)
        st.close_stdin()
        self._wait(lambda: st.done, timeout, f"put {path}")
        if st.result.get("op") == "error":
            raise AgentError(st.result["reason"])
        return st.result.get("size", 0)

    def fs_request(self, op: str, path: str, **fields) -> Stream:
        """Start a file-system request (ls, stat, mkdir, rm, mv); its result is the stream's
        final message: {"op": "ok", ...} or {"op": "error", "reason", "code": errno}."""
        if op not in FS_OPS:
            raise ValueError(f"unknown file-system operation {op!r}")
        st = self._new_stream("fs")
        self._send(p.encode_json(st.id, p.CONTROL, {"op": op, "path": path, **fields}))
        return st

    def fs(self, op: str, path: str, timeout: float = 60.0, **fields) -> dict:
        """A blocking fs_request: the ok message, or AgentError (code = the guest's errno)."""
        st = self.fs_request(op, path, **fields)
        self._wait(lambda: st.done, timeout, f"{op} {path}")
        if st.result.get("op") == "error":
            raise AgentError(st.result["reason"], st.result.get("code", 0))
        return st.result

    def get_file(self, path: str, timeout: float = 60.0, limit: int = 1 << 30) -> bytes:
        st = self.get_request(path)
        buf = bytearray()

        def drained():
            buf.extend(st.take(p.STDOUT))
            if len(buf) > limit:
                raise KvmvmError(f"{path} is larger than {limit} bytes")
            return st.done

        self._wait(drained, timeout, f"get {path}")
        if st.result.get("op") == "error":
            raise AgentError(st.result["reason"])
        return bytes(buf)


def socketpair_agent(agent: str) -> tuple[Session, "os.PathLike"]:
    """For tests: the agent binary as a host process on one end of a socketpair."""
    import subprocess

    a, b = socket.socketpair()
    proc = subprocess.Popen([agent, "--fd", str(b.fileno())], pass_fds=(b.fileno(),),
                            stderr=subprocess.PIPE)
    b.close()
    return Session(a), proc
