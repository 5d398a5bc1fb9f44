"""`kvmvm vm pause|resume|snapshot|stop SOCK`: control a running `kvmvm boot --api-sock`.

A tiny HTTP/1.1 client over AF_UNIX speaking Firecracker's wire format:
PATCH /vm {"state": "Paused"|"Resumed"}, PUT /snapshot/create {"snapshot_type": "Full",
"snapshot_path": DIR, "mem_file_path": DIR} (kvmvm's snapshot is a directory: both paths
name it), and PUT /actions {"action_type": "Stop"} (a kvmvm extension: Firecracker has no
stop). Errors come back as {"fault_message": ...} and are printed as one line.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import click

from kvmvm.errors import ConfigError, KvmvmError

TIMEOUT_S = 60.0


class ApiCallError(KvmvmError):
    """The VMM answered with an error."""

    exit_code = 1


def request(sock_path: str, method: str, path: str, body: dict | None = None,
            timeout: float = TIMEOUT_S) -> tuple[int, dict | None]:
    """One HTTP/1.1 request on the Unix socket: (status, parsed JSON body or None)."""
    data = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"Connection: close\r\n\r\n").encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(sock_path)
        except FileNotFoundError:
            raise ConfigError(f"{sock_path}: no such API socket (is `kvmvm boot --api-sock` running?)") from None
        except ConnectionRefusedError:
            raise ConfigError(f"{sock_path}: nothing is listening (a stale socket?)") from None
        except OSError as e:
            raise ConfigError(f"{sock_path}: cannot connect: {e.strerror}") from None
        s.sendall(head + data)
        return _read_response(s)
    except socket.timeout:
        raise ApiCallError(f"{sock_path}: no answer within {timeout:g} s") from None
    finally:
        s.close()


def _read_response(s: socket.socket) -> tuple[int, dict | None]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ApiCallError("the VMM closed the connection without an answer")
        buf += chunk
        if len(buf) > 1 << 20:
            raise ApiCallError("the VMM's answer has no end of headers")
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise ApiCallError(f"malformed answer from the VMM: {lines[0][:80]!r}") from None
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip() or 0)
    length = min(length, 1 << 20)
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    body = None
    if rest[:length].strip():
        try:
            body = json.loads(rest[:length])
        except ValueError:
            body = {"fault_message": rest[:length].decode(errors="replace")[:200]}
    return status, body


def call(sock_path: str, method: str, path: str, body: dict | None = None) -> dict | None:
    status, out = request(sock_path, method, path, body)
    if status >= 300:
        msg = (out or {}).get("fault_message") if isinstance(out, dict) else None
        raise ApiCallError(f"{method} {path}: {msg or f'HTTP {status}'}")
    return out


@click.group("vm")
def cli():
    """Control a running microVM through its API socket (Firecracker's wire format)."""


@cli.command("pause")
@click.argument("sock")
def pause(sock):
    """Pause every vCPU and device."""
    call(sock, "PATCH", "/vm", {"state": "Paused"})


@cli.command("resume")
@click.argument("sock")
def resume(sock):
    """Resume a paused microVM."""
    call(sock, "PATCH", "/vm", {"state": "Resumed"})


@cli.command("snapshot")
@click.argument("sock")
@click.option("--out", "out", required=True, metavar="DIR", help="the snapshot directory")
@click.option("--resume", "resume_after", is_flag=True, help="resume the VM afterwards")
def snapshot(sock, out, resume_after):
    """Pause (if running) and write a full snapshot to DIR; the VM stays paused."""
    out = os.path.abspath(out)
    call(sock, "PATCH", "/vm", {"state": "Paused"})
    call(sock, "PUT", "/snapshot/create",
         {"snapshot_type": "Full", "snapshot_path": out, "mem_file_path": out})
    if resume_after:
        call(sock, "PATCH", "/vm", {"state": "Resumed"})
    sys.stdout.write(f"{out}\n")


@cli.command("stop")
@click.argument("sock")
def stop(sock):
    """Stop the microVM now."""
    call(sock, "PUT", "/actions", {"action_type": "Stop"})
