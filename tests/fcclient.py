"""A Firecracker API client for tests: HTTP/1.1 over a Unix socket, one keep-alive
connection, and every response checked against the swagger (tests/apischema.py)."""

from __future__ import annotations

import http.client
import json
import socket
import time

from tests.apischema import check_request, check_response


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class FcClient:
    def __init__(self, path: str):
        self.path = path
        self.conn = _UnixConnection(path)

    def request(self, method: str, path: str, body=None, raw: bytes | None = None,
                valid: bool = True):
        """(status, parsed body or None). `body` is JSON (checked to be a valid Firecracker
        request unless valid=False); `raw` is sent as is."""
        if body is not None and valid:
            check_request(method, path, body)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        text = resp.read()
        payload = json.loads(text) if text else None
        check_response(method, path, resp.status, payload)
        return resp.status, payload

    def get(self, path: str):
        return self.request("GET", path)

    def put(self, path: str, body, **kw):
        return self.request("PUT", path, body, **kw)

    def patch(self, path: str, body, **kw):
        return self.request("PATCH", path, body, **kw)

    def ok(self, method: str, path: str, body=None):
        status, payload = self.request(method, path, body)
        assert status in (200, 204), f"{method} {path}: {status} {payload}"
        return payload

    def fault(self, method: str, path: str, body=None, valid: bool = True, raw: bytes | None = None) -> str:
        status, payload = self.request(method, path, body, raw=raw, valid=valid)
        assert status == 400, f"{method} {path}: expected 400, got {status} {payload}"
        return payload["fault_message"]

    def close(self):
        self.conn.close()


def wait_socket(path: str, proc=None, timeout: float = 10.0) -> None:
    """Until the API socket accepts a connection (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"VMM exited with {proc.returncode} before its API socket was ready")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return
        except OSError:
            time.sleep(0.01)
        finally:
            s.close()
    raise AssertionError(f"API socket {path} not ready after {timeout} s")
