"""`kvmvm sandbox ...` and its per-sandbox process protocol (kvmvm/sandbox/server.py):
argument handling, exit statuses, the state directory (pid-checked through its lock,
reclaimed when dead), and exec/cp/ls/rm against a served sandbox whose "VM" is the real
agent as a host process."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import threading

import pytest

from kvmvm.cli import main
from kvmvm.sandbox import Sandbox
from kvmvm.sandbox import server as srv
from tests.unit.test_sandbox_api import IMG, AgentProcessVm


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir()
    root = srv.state_root()
    root.mkdir(parents=True)
    return root


@pytest.fixture
def served(state, tmp_path):
    """A sandbox directory served as `kvmvm sandbox create` would (lock, sock, info.json)."""
    d = state / "sb-000000000001"
    d.mkdir()
    lock = os.open(d / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    sb = Sandbox._adopt(AgentProcessVm(), IMG, cwd=str(tmp_path))
    (d / "info.json").write_text(json.dumps(dict(sb.get_info(), sandbox_id=d.name, pid=0)))
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(str(d / "sock"))
    ls.listen(4)
    server = srv.Server(d, sb)
    def run():       # as server.main: serve, then the directory goes
        server.run(ls)
        shutil.rmtree(d, ignore_errors=True)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    yield d
    server.stop.set()
    t.join(5)
    ls.close()
    sb.kill()
    os.close(lock)


def test_usage_errors_are_one_line(state, capsys):
    assert main(["sandbox", "exec", "sb-nope", "--", "true"]) == 1
    assert main(["sandbox", "cp", "a", "b"]) == 2
    assert main(["sandbox", "rm"]) == 2
    assert main(["sandbox", "exec", "../x", "true"]) == 2
    assert main(["sandbox", "ls", "notanid"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5 and all(line.startswith("kvmvm: ") for line in err)
    assert "no sandbox sb-nope" in err[0]


def test_dead_sandbox_directories_are_reclaimed(state):
    dead = state / "sb-dead"
    dead.mkdir()
    (dead / "lock").write_text("999999\n")      # nobody holds it: its process died
    (dead / "sock").touch()
    live = state / "sb-live"
    live.mkdir()
    fd = os.open(live / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert srv.reclaim() == ["sb-dead"]
        assert not dead.exists() and live.exists()
    finally:
        os.close(fd)


def test_exec_cp_ls_rm_through_the_sandbox_process(served, tmp_path, capsys):
    sid = served.name
    assert main(["sandbox", "exec", sid, "--", "sh", "-c", "echo out; echo err >&2; exit 3"]) == 3
    cap = capsys.readouterr()
    assert cap.out == "out\n" and cap.err == "err\n"
    assert main(["sandbox", "exec", "--json", sid, "echo $((6*7))"]) == 0
    assert json.loads(capsys.readouterr().out)["stdout"] == "42\n"
    assert main(["sandbox", "exec", "--timeout", "0.5", sid, "sleep 30"]) == 124
    capsys.readouterr()
    src = tmp_path / "src.txt"
    src.write_text("payload")
    assert main(["sandbox", "cp", str(src), f"{sid}:{tmp_path}/in/dst.txt"]) == 0
    assert (tmp_path / "in" / "dst.txt").read_text() == "payload"
    assert main(["sandbox", "cp", f"{sid}:{tmp_path}/in/dst.txt", str(tmp_path / "back.txt")]) == 0
    assert (tmp_path / "back.txt").read_text() == "payload"
    assert main(["sandbox", "cp", f"{sid}:{tmp_path}/none", str(tmp_path / "x")]) == 1
    assert "No such file" in capsys.readouterr().err
    assert main(["sandbox", "ls", "--json", f"{sid}:{tmp_path}/in"]) == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)] == ["dst.txt"]
    assert main(["sandbox", "ls", "--json"]) == 0
    assert [r["sandbox_id"] for r in json.loads(capsys.readouterr().out)] == [sid]
    assert main(["sandbox", "rm", sid]) == 0
    assert main(["sandbox", "exec", sid, "true"]) == 1
