"""HTTP/1.1 on a Unix socket: a thread per connection, on the C modules `_socket` and
`_thread` alone.

Only what Firecracker's API clients use: requests with a Content-Length body, keep-alive,
`Expect: 100-continue`. Chunked bodies are refused with a fault message, bodies are capped
(Firecracker's default limit, 51200 bytes), and every request is handed to `dispatch`, which
applies it to the VM under one lock.

The first answer is what a client waits for after the socket appears, so nothing on its
path imports `socket`, `socketserver`, `threading` or `json` (together with the `enum` and
`re` they pull in, about twice the interpreter's own start-up): the request line and headers
are read here rather than by http.server, and answers are written by kvmvm.api.jsonout.
"""

import _socket
import _thread
import os
import stat
import time

from kvmvm.api import jsonout
from kvmvm.api.logs import name_thread

MAX_PAYLOAD = 51200          # Firecracker's --http-api-max-payload-size default
MAX_LINE = 8192
MAX_HEADERS = 64
MAX_CONNECTIONS = 64         # each holds a thread; a flood of idle connections is refused
_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 505: "HTTP Version Not Supported"}


class _Reader:
    """Buffered reads from a connected socket: `readline(limit)` and `read(n)` as a
    BufferedReader has them (b"" at the end; a broken connection reads as its end)."""

    __slots__ = ("sock", "buf")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self, want: int) -> bool:
        try:
            chunk = self.sock.recv(max(want, 65536))
        except OSError:
            chunk = b""
        self.buf += chunk
        return bool(chunk)

    def readline(self, limit: int) -> bytes:
        while True:
            i = self.buf.find(b"\n", 0, limit)
            if i >= 0:
                n = i + 1
                break
            if len(self.buf) >= limit or not self._fill(1):
                n = limit
                break
        line, self.buf = self.buf[:n], self.buf[n:]
        return line

    def read(self, n: int) -> bytes:
        while len(self.buf) < n and self._fill(n - len(self.buf)):
            pass
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


class _Connection:
    """One client: requests answered in order until it closes or asks to."""

    def __init__(self, server: "ApiServer", sock):
        self.server = server
        self.sock = sock
        self.rfile = _Reader(sock)

    def handle(self) -> None:
        name_thread("fc_api")      # Firecracker's thread name in log lines
        try:
            while self._one_request():
                pass
        except Exception:   # noqa: BLE001 - a client that went away mid-request
            pass
        finally:
            name_thread(None)
            try:
                self.sock.shutdown(_socket.SHUT_WR)
            except OSError:
                pass
            self.sock.close()

    def _fail(self, status: int, msg: str) -> bool:
        self._send(status, {"fault_message": msg}, keep_alive=False)
        return False

    def _one_request(self) -> bool:
        """Read and answer one request; False when the connection should close."""
        rfile = self.rfile
        line = rfile.readline(MAX_LINE + 1)
        while line in (b"\r\n", b"\n"):
            line = rfile.readline(MAX_LINE + 1)
        if not line:
            return False
        if len(line) > MAX_LINE or not line.endswith(b"\n"):
            return self._fail(400, "Request line is too long.")
        parts = line.decode("latin-1").split()
        if len(parts) != 3:
            return self._fail(400, "Invalid HTTP request line.")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            return self._fail(505, "Unsupported HTTP version.")
        headers = {}
        for _ in range(MAX_HEADERS + 1):
            h = rfile.readline(MAX_LINE + 1)
            if not h:
                return False
            if h in (b"\r\n", b"\n"):
                break
            if len(h) > MAX_LINE:
                return self._fail(400, "Header line is too long.")
            name, sep, value = h.decode("latin-1").partition(":")
            if not sep:
                return self._fail(400, "Invalid header.")
            headers[name.strip().lower()] = value.strip()
        else:
            return self._fail(400, "Too many headers.")
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if "transfer-encoding" in headers:
            return self._fail(400, "Chunked transfer encoding is not supported: send a Content-Length.")
        try:
            length = int(headers.get("content-length", "0"))
            if length < 0:
                raise ValueError
        except ValueError:
            return self._fail(400, "Invalid Content-Length header.")
        server = self.server
        if length > server.max_payload:
            return self._fail(413, f"Request payload with size {length} is larger than the limit "
                                   f"of {server.max_payload} allowed by server.")
        if length and headers.get("expect", "").lower() == "100-continue":
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = rfile.read(length) if length else b""
        if len(body) < length:
            return False
        status, payload = server.dispatch(method, target, body if length else None)
        self._send(status, payload, keep_alive)
        return keep_alive

    def _send(self, status: int, payload, keep_alive: bool) -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}", "Server: Firecracker API",
                f"Connection: {'keep-alive' if keep_alive else 'close'}"]
        data = b""
        if payload is not None and status != 204:
            data = jsonout.dumps(payload).encode()
            head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
        try:
            self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        except OSError:
            pass


class ApiServer:
    """One thread per connection; `dispatch(method, target, body)` -> (status, payload)."""

    request_queue_size = 64

    def __init__(self, path: str, dispatch, max_payload: int = MAX_PAYLOAD, sock=None):
        """Serve on `sock` (kvmvm.api.listen.listen(path), bound early) or bind path now."""
        from kvmvm.api.listen import listen

        self.path = path
        self.dispatch = dispatch
        self.max_payload = max_payload
        self.socket = (sock or listen(path, self.request_queue_size)).raw
        self._accepting = None         # a lock held while the accept loop runs
        self._closing = False
        self._count_lock = _thread.allocate_lock()
        self._connections = 0

    def start(self) -> "ApiServer":
        """Serve in a thread: accept() blocks (no polling interval to wait out on close),
        each connection gets its own thread."""
        self._accepting = _thread.allocate_lock()
        self._accepting.acquire()
        try:
            _thread.start_new_thread(self._accept_loop, ())
        except BaseException:
            self._accepting.release()
            raise
        return self

    def _accept_loop(self) -> None:
        try:
            while not self._closing:
                try:
                    fd, _ = self.socket._accept()      # a blocking accept4(SOCK_CLOEXEC)
                except OSError:
                    if self._closing:
                        return
                    time.sleep(0.05)                    # e.g. out of fds: retry, do not spin
                    continue
                conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
                with self._count_lock:
                    full = self._connections >= MAX_CONNECTIONS
                    if not full:
                        self._connections += 1
                if full:
                    conn.close()
                    continue
                try:
                    _thread.start_new_thread(self._serve, (conn,))   # a thread per connection
                except Exception:   # noqa: BLE001 - e.g. no thread could start: drop this one
                    with self._count_lock:
                        self._connections -= 1
                    conn.close()
        finally:
            self._accepting.release()

    def _serve(self, conn) -> None:
        try:
            _Connection(self, conn).handle()
        finally:
            with self._count_lock:
                self._connections -= 1

    def close(self) -> None:
        """Stop serving and remove the socket."""
        self._closing = True
        if self._accepting is not None:
            try:
                self.socket.shutdown(_socket.SHUT_RDWR)   # wakes the blocked accept()
            except OSError:
                pass
            if self._accepting.acquire(True, 2.0):
                self._accepting.release()
            self._accepting = None
        self.socket.close()
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except OSError:
            pass
