"""The background process that holds one CLI sandbox (`kvmvm sandbox create`).

Each sandbox made by the CLI lives in its own process (as a podman container lives under
conmon); there is no central daemon. The process holds an exclusive flock on
`<state>/<id>/lock` for its whole life, so a dead one is recognised (the lock is free)
and its directory reclaimed by the next CLI call. It answers requests on `<state>/<id>/sock`:
one JSON line in, one JSON line out per connection (docs/sandbox.md, "CLI").

    python -m kvmvm.sandbox.server STATE_DIR SPEC_JSON
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path

MAX_REQUEST = 512 << 20       # one request line (base64 file data included)


def state_root() -> Path:
    from kvmvm.agent.rundir import runtime_root

    return runtime_root().parent / "sandboxes"


def alive(d: Path) -> bool:
    """A sandbox directory whose process still holds its lock."""
    try:
        fd = os.open(d / "lock", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def reclaim(root: Path | None = None) -> list[str]:
    """Remove the directories of sandboxes whose process died (their VM died with it)."""
    import time

    root = root or state_root()
    gone = []
    if root.is_dir():
        for d in root.iterdir():
            if not d.is_dir() or alive(d):
                continue
            if not (d / "lock").exists():
                with contextlib.suppress(OSError):
                    if time.time() - d.stat().st_mtime < 60:
                        continue       # being created right now
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d.name)
    return gone


def _recv_line(conn: socket.socket) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError("request too large")
    return bytes(buf)


def request(d: Path, msg: dict, timeout: float | None = None) -> dict:
    """Send one request to the sandbox process of directory d; its reply."""
    from kvmvm.errors import SandboxNotFound

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        try:
            s.connect(str(d / "sock"))
        except OSError:
            raise SandboxNotFound(f"sandbox {d.name} is not running") from None
        s.sendall(json.dumps(msg).encode() + b"\n")
        line = _recv_line(s)
    finally:
        s.close()
    if not line:
        raise SandboxNotFound(f"sandbox {d.name} ended while answering")
    return json.loads(line)


class Server:
    def __init__(self, d: Path, sb):
        self.d, self.sb = d, sb
        self.stop = threading.Event()

    def handle(self, msg: dict) -> dict:
        from kvmvm.errors import CommandTimeout, KvmvmError

        sb = self.sb
        op = msg.get("op")
        try:
            if op == "exec":
                try:
                    r = sb.commands.run(msg["argv"], envs=msg.get("envs"), cwd=msg.get("cwd"), user=msg.get("user"),
                                        stdin=base64.b64decode(msg["stdin"]) if msg.get("stdin") else None,
                                        timeout=msg.get("timeout"), check=False)
                    timed_out = False
                except CommandTimeout as e:
                    r, timed_out = e.result, True
                return {"ok": True, "stdout": base64.b64encode(r.stdout_bytes).decode(),
                        "stderr": base64.b64encode(r.stderr_bytes).decode(), "exit_code": r.exit_code,
                        "error": r.error, "truncated": r.truncated, "timed_out": timed_out}
            if op == "put":
                info = sb.files.write(msg["path"], base64.b64decode(msg["data"]), mode=int(msg.get("mode", 0o644)))
                return {"ok": True, "info": info.to_dict()}
            if op == "get":
                return {"ok": True, "data": base64.b64encode(sb.files.read(msg["path"], "bytes")).decode()}
            if op == "ls":
                return {"ok": True, "entries": [e.to_dict() for e in sb.files.list(msg["path"])]}
            if op == "info":
                return {"ok": True, "info": sb.get_info()}
            if op == "kill":
                self.stop.set()
                return {"ok": True}
            return {"ok": False, "error": f"unknown request {op!r}", "kind": "ConfigError"}
        except (KvmvmError, OSError) as e:
            return {"ok": False, "error": str(e), "kind": type(e).__name__,
                    "errno": getattr(e, "errno", None)}
        except (KeyError, TypeError, ValueError) as e:
            return {"ok": False, "error": f"bad request: {e}", "kind": "ConfigError"}

    def serve_conn(self, conn: socket.socket) -> None:
        with conn:
            try:
                msg = json.loads(_recv_line(conn))
                reply = self.handle(msg) if isinstance(msg, dict) else {"ok": False, "error": "bad request"}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except (OSError, ValueError):
                pass

    def run(self, listener: socket.socket) -> None:
        listener.settimeout(0.5)
        while not self.stop.is_set() and self.sb.is_running():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            conn.settimeout(None)
            threading.Thread(target=self.serve_conn, args=(conn,), daemon=True).start()


def main(argv: list[str]) -> int:
    from kvmvm.sandbox import Sandbox

    d = Path(argv[0])
    spec = json.loads(argv[1])
    out = os.fdopen(1, "w")        # the CLI reads one line: ready or the error
    lock = os.open(d / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.write(lock, f"{os.getpid()}\n".encode())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sb = None
    try:
        sb = Sandbox.create(spec.pop("image"), _id=d.name, **spec)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(str(d / "sock"))
        listener.listen(16)
        info = dict(sb.get_info(), pid=os.getpid())
        (d / "info.json").write_text(json.dumps(info))
        out.write(json.dumps({"ok": True, "info": info}) + "\n")
        out.close()
        srv = Server(d, sb)
        threading.Thread(target=lambda: (stop.wait(), srv.stop.set()), daemon=True).start()
        srv.run(listener)
        listener.close()
        return 0
    except Exception as e:        # noqa: BLE001 - reported to the CLI as one line
        with contextlib.suppress(Exception):
            out.write(json.dumps({"ok": False, "error": str(e) or type(e).__name__, "kind": type(e).__name__}) + "\n")
            out.close()
        return 1
    finally:
        if sb is not None:
            sb.kill()
        shutil.rmtree(d, ignore_errors=True)
        os.close(lock)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
