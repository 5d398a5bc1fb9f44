"""HTTP/1.1 on a Unix socket, from the standard library's socketserver (threaded).

Only what Firecracker's API clients use: requests with a Content-Length body, keep-alive,
`Expect: 100-continue`. Chunked bodies are refused with a fault message, bodies are capped
(Firecracker's default limit, 51200 bytes), and every request is handed to `dispatch`, which
applies it to the VM under one lock. The request line and headers are parsed here rather
than by http.server, whose imports (email, http.client) would cost more than the rest of
the API's start-up together.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import stat
import threading
import time

MAX_PAYLOAD = 51200          # Firecracker's --http-api-max-payload-size default
MAX_LINE = 8192
MAX_HEADERS = 64
MAX_CONNECTIONS = 64         # each holds a thread; a flood of idle connections is refused
_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 505: "HTTP Version Not Supported"}


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        threading.current_thread().name = "fc_api"     # Firecracker's thread name in log lines
        while self._one_request():
            pass

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
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
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
            data = json.dumps(payload).encode()
            head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
        try:
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        except OSError:
            pass


class ApiServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """One thread per connection; `dispatch(method, target, body)` -> (status, payload)."""

    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 64

    def __init__(self, path: str, dispatch, max_payload: int = MAX_PAYLOAD, sock=None):
        """Serve on `sock` (kvmvm.api.listen.listen(path), bound early) or bind path now."""
        from kvmvm.api.listen import listen

        self.path = path
        self.dispatch = dispatch
        self.max_payload = max_payload
        sock = sock or listen(path, self.request_queue_size)
        super().__init__(path, _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock.take()
        self._thread = None
        self._closing = False
        self._count_lock = threading.Lock()
        self._connections = 0

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count_lock:
                self._connections -= 1

    def start(self) -> "ApiServer":
        """Serve in a daemon thread: accept() blocks (no polling interval to wait out on
        close), each connection gets its own thread."""
        self._thread = threading.Thread(target=self._accept_loop, name="fc_api_accept", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                request, addr = self.get_request()      # a blocking accept()
            except OSError:
                if self._closing:
                    return
                time.sleep(0.05)                        # e.g. out of fds: retry, do not spin
                continue
            with self._count_lock:
                full = self._connections >= MAX_CONNECTIONS
                if not full:
                    self._connections += 1
            if full:
                self.shutdown_request(request)
                continue
            try:
                self.process_request(request, addr)    # a thread per connection
            except Exception:   # noqa: BLE001 - e.g. no thread could start: drop this one
                with self._count_lock:
                    self._connections -= 1
                self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        pass    # a client that went away mid-request is not the server's problem

    def close(self) -> None:
        """Stop serving and remove the socket."""
        self._closing = True
        if self._thread is not None:
            try:
                self.socket.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept()
            except OSError:
                pass
            self._thread.join(2.0)
            self._thread = None
        self.server_close()
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except OSError:
            pass
