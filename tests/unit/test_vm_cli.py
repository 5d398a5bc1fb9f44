"""`kvmvm vm ...`: the HTTP/1.1-over-AF_UNIX client speaks Firecracker's wire format
(checked against a small scripted server: a fake only for the client's logic; the real
server is kvmvm/api)."""
from __future__ import annotations

import json
import socket
import threading

import pytest
from click.testing import CliRunner

from kvmvm.cli import main
from kvmvm.cli.vm import cli

pytestmark = pytest.mark.host


class Server:
    """Answers each request with the next (status, body) and records what it got."""

    def __init__(self, path: str, answers: list[tuple[int, dict | None]]):
        self.got: list[tuple[str, str, dict | None]] = []
        self.answers = list(answers)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.answers:
            c, _ = self.sock.accept()
            data = b""
            while b"\r\n\r\n" not in data:
                data += c.recv(4096)
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            n = int(next(v for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length"))
            while len(body) < n:
                body += c.recv(4096)
            method, path, _ = lines[0].split()
            self.got.append((method, path, json.loads(body) if body else None))
            status, out = self.answers.pop(0)
            payload = json.dumps(out).encode() if out is not None else b""
            reason = "No Content" if status == 204 else "Bad Request"
            c.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
            c.close()


def test_pause_resume_snapshot_wire_format(tmp_path):
    sock = str(tmp_path / "api.sock")
    srv = Server(sock, [(204, None)] * 5)
    r = CliRunner()
    assert r.invoke(cli, ["pause", sock]).exit_code == 0
    assert r.invoke(cli, ["resume", sock]).exit_code == 0
    res = r.invoke(cli, ["snapshot", sock, "--out", str(tmp_path / "snap"), "--resume"])
    assert res.exit_code == 0, res.output
    d = str(tmp_path / "snap")
    assert srv.got == [
        ("PATCH", "/vm", {"state": "Paused"}),
        ("PATCH", "/vm", {"state": "Resumed"}),
        ("PATCH", "/vm", {"state": "Paused"}),
        ("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": d, "mem_file_path": d}),
        ("PATCH", "/vm", {"state": "Resumed"}),
    ]


def test_fault_message_is_one_line(tmp_path, capsys):
    sock = str(tmp_path / "api.sock")
    Server(sock, [(400, {"fault_message": "The requested operation is not supported after starting the microVM."})])
    rc = main(["vm", "pause", sock])
    err = capsys.readouterr().err
    assert rc == 1
    assert err == "kvmvm: PATCH /vm: The requested operation is not supported after starting the microVM.\n"


def test_missing_socket_is_one_line_status_2(tmp_path, capsys):
    rc = main(["vm", "stop", str(tmp_path / "none.sock")])
    assert rc == 2
    assert "no such API socket" in capsys.readouterr().err
