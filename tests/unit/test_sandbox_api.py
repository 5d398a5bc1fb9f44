"""kvmvm.Sandbox's logic over the real guest agent, run as a host process on a socketpair
(`kvmvm-agent --fd N`): commands, results, errors, timeouts, output caps, streaming,
background handles, files, threads, teardown. The VM-backed tests are in
tests/linux/test_sandbox.py."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest

from kvmvm.agent.session import socketpair_agent
from kvmvm.errors import (CommandExitError, CommandTimeout, ConfigError, SandboxClosed, SandboxError,
                          SandboxFileNotFound, SandboxTimeout)
from kvmvm.sandbox import Sandbox
from kvmvm.sandbox.commands import build_argv, build_env

AGENT = os.path.join(os.path.dirname(__file__), "..", "..", "guest-images", "agent", "out", "kvmvm-agent")


class AgentProcessVm:
    """Stands in for a SandboxVm: the real agent as a host process."""

    def __init__(self):
        self.session, self.proc = socketpair_agent(AGENT)
        self.session.handshake(10)
        self.warm = False
        self.closed = False

    def ended(self):
        return self.proc.poll() is not None

    def end_message(self):
        return f"agent exited with {self.proc.returncode}"

    def console_tail(self):
        return ""

    def close(self):
        self.closed = True
        self.session.close()
        self.proc.wait(10)


IMG = SimpleNamespace(digest="sha256:" + "0" * 64, id="0" * 64, names=["test"], rootfs="/nonexistent",
                      config={"Env": ["PATH=/usr/bin:/bin", "FROM_IMAGE=1"]})


@pytest.fixture
def sb(tmp_path):
    s = Sandbox._adopt(AgentProcessVm(), IMG, cwd=str(tmp_path), envs={"SB": "yes"})
    yield s
    s.kill()


def test_argument_shapes():
    assert build_argv("echo 1") == ["/bin/sh", "-c", "echo 1"]
    assert build_argv(["ls", "-l"]) == ["ls", "-l"]
    for bad in ("", "  ", [], [1], None, 3):
        with pytest.raises(ConfigError):
            build_argv(bad)
    assert build_env({"A": "1"}, {"B": "2"}) == ["A=1", "B=2"]
    with pytest.raises(ConfigError):
        build_env({}, {"A=B": "1"})
    with pytest.raises(TypeError):
        Sandbox()


def test_run_results_env_cwd(sb, tmp_path):
    r = sb.commands.run("echo out; echo err >&2; echo $SB $FROM_IMAGE $CALL; pwd", envs={"CALL": "c"})
    assert r.exit_code == 0 and r.stderr == "err\n"
    assert r.stdout == f"out\nyes 1 c\n{tmp_path}\n"
    assert sb.commands.run(["printf", "%s|", "a b", "c"]).stdout == "a b|c|"
    assert sb.commands.run("pwd", cwd="/").stdout == "/\n"
    with pytest.raises(ConfigError):
        sb.commands.run("pwd", cwd="relative")


def test_exit_codes_and_check(sb):
    with pytest.raises(CommandExitError) as ei:
        sb.commands.run("echo partial; echo why >&2; exit 7")
    assert ei.value.exit_code == 7 and ei.value.result.stdout == "partial\n" and "why" in str(ei.value)
    assert sb.commands.run("exit 7", check=False).exit_code == 7
    assert sb.commands.run("kill -9 $$", check=False).exit_code == 128 + 9
    with pytest.raises(SandboxError, match="cannot run"):
        sb.commands.run(["/no/such/binary"])


def test_timeout_kills_the_command_not_the_sandbox(sb):
    t = time.monotonic()
    with pytest.raises(CommandTimeout) as ei:
        sb.commands.run("echo started; sleep 30 | cat", timeout=0.5)
    assert isinstance(ei.value, TimeoutError)
    assert time.monotonic() - t < 5
    assert ei.value.result.stdout == "started\n"
    assert sb.commands.run("echo alive").stdout == "alive\n"


def test_output_cap_kills_and_reports(sb):
    r = sb.commands.run("yes 0123456789", output_limit=1 << 20, check=False)
    assert r.truncated and len(r.stdout_bytes) + len(r.stderr_bytes) == 1 << 20
    assert r.exit_code == 128 + 9 and "output limit" in r.error
    with pytest.raises(CommandExitError, match="output limit"):
        sb.commands.run("yes", output_limit=4096)
    with pytest.raises(ConfigError):
        sb.commands.run("true", output_limit=-1)
    assert not sb.commands.run("echo small").truncated


def test_stdin_bytes_and_file(sb, tmp_path):
    assert sb.commands.run("cat", stdin=b"x" * 700_000).stdout == "x" * 700_000
    assert sb.commands.run("wc -c", stdin="abc").stdout.strip() == "3"
    f = tmp_path / "in.bin"
    f.write_bytes(b"y" * 300_000)
    with open(f, "rb") as fh:
        assert sb.commands.run("wc -c", stdin=fh).stdout.strip() == "300000"


def test_streaming_callbacks(sb):
    out, err = [], []
    r = sb.commands.run("echo a; sleep 0.2; echo b; echo e >&2", on_stdout=out.append, on_stderr=err.append)
    assert "".join(out) == r.stdout == "a\nb\n" and "".join(err) == "e\n"


def test_background_handle(sb):
    h = sb.commands.run("read line; echo got $line; sleep 30", background=True)
    assert h.pid > 1 and h.is_running()
    h.send_stdin("hello\n")
    deadline = time.monotonic() + 10
    while "got hello" not in h.stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.stdout == "got hello\n"
    assert h.kill()
    r = h.wait(check=False)
    assert r.exit_code == 128 + signal.SIGKILL and not h.is_running()
    assert not h.kill()
    h2 = sb.commands.run("sleep 30", background=True)
    with pytest.raises(CommandTimeout):
        h2.wait(timeout=0.3)


def test_files(sb, tmp_path):
    p = f"{tmp_path}/d/x.txt"
    info = sb.files.write(p, "hello")
    assert info.type == "file" and info.size == 5
    assert sb.files.read(p) == "hello" and sb.files.read(p, "bytes") == b"hello"
    assert sb.files.read("d/x.txt") == "hello"          # relative to the sandbox's cwd
    assert [e.name for e in sb.files.list(f"{tmp_path}/d")] == ["x.txt"]
    assert sb.files.exists(p) and not sb.files.exists(f"{tmp_path}/nope")
    assert sb.files.make_dir(f"{tmp_path}/e/f") and not sb.files.make_dir(f"{tmp_path}/e/f")
    moved = sb.files.rename(p, f"{tmp_path}/e/y.txt")
    assert moved.path == f"{tmp_path}/e/y.txt" and not sb.files.exists(p)
    sb.files.remove(f"{tmp_path}/e")
    assert not sb.files.exists(f"{tmp_path}/e")
    with pytest.raises(SandboxFileNotFound) as ei:
        sb.files.read(f"{tmp_path}/nope")
    assert isinstance(ei.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        sb.files.list(f"{tmp_path}/nope")
    big = os.urandom(3 << 20)
    sb.files.write("big.bin", big)
    assert sb.files.read("big.bin", "bytes") == big
    assert sum(len(c) for c in sb.files.read("big.bin", "stream")) == len(big)
    with pytest.raises(OSError, match="read limit"):
        sb.files.read("big.bin", "bytes", limit=1 << 20)
    with open(tmp_path / "src.bin", "wb") as f:
        f.write(big)
    with open(tmp_path / "src.bin", "rb") as f:
        sb.files.write("copy.bin", f)
    assert (tmp_path / "copy.bin").read_bytes() == big


def test_many_commands_from_many_threads(sb):
    out, errors = {}, []

    def work(i):
        try:
            out[i] = sb.commands.run(f"sleep 0.1; echo {i}").stdout
        except Exception as e:    # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and out == {i: f"{i}\n" for i in range(40)}


def test_kill_tears_down_and_later_calls_fail(sb):
    vm = sb.vm
    h = sb.commands.run("sleep 30", background=True)
    sb.kill()
    sb.kill()    # idempotent
    assert vm.closed and vm.proc.poll() is not None
    assert not sb.is_running()
    with pytest.raises(SandboxClosed, match="was killed"):
        sb.commands.run("true")
    with pytest.raises(SandboxClosed):
        h.wait()
    assert not [t for t in threading.enumerate() if t.name.startswith(f"kvmvm-{sb.sandbox_id}")]


def test_lifetime_timeout_and_extension(tmp_path):
    s = Sandbox._adopt(AgentProcessVm(), IMG, cwd=str(tmp_path))
    s.set_timeout(0.5)
    s.set_timeout(30)        # extended: survives the first deadline
    time.sleep(0.8)
    assert s.commands.run("echo ok").stdout == "ok\n"
    s.set_timeout(0.3)
    time.sleep(0.8)
    with pytest.raises(SandboxTimeout, match="lifetime of 0.3 s"):
        s.commands.run("true")
    assert s.vm.closed


@pytest.mark.parametrize("background", [False, True], ids=["idle", "background-command-running"])
def test_garbage_collection_tears_down(tmp_path, background):
    import gc

    vm = AgentProcessVm()
    s = Sandbox._adopt(vm, IMG, cwd=str(tmp_path))
    assert s.commands.run("echo x").stdout == "x\n"
    if background:      # a running command's stream must not keep its sandbox alive
        s.commands.run("while :; do echo tick; sleep 0.05; done", background=True)
        time.sleep(0.3)
    del s
    gc.collect()
    deadline = time.monotonic() + 5
    while not vm.closed and time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
    assert vm.closed and vm.proc.poll() is not None


def test_agent_death_is_one_clear_error(sb):
    sb.vm.proc.kill()
    sb.vm.proc.wait()
    with pytest.raises(SandboxClosed, match="agent exited"):
        sb.commands.run("true")


def test_create_validates_before_booting():
    for kw in ({"cpus": 0}, {"memory_mib": 1}, {"timeout": -1}, {"pids": 2}, {"output_limit": -5},
               {"cwd": "x"}, {"hostname": "bad name"}, {"disk_mib": 1}, {"disk_mib": True}):
        with pytest.raises(ConfigError):
            Sandbox.create(IMG, **kw)
    with pytest.raises(ConfigError, match="image"):
        Sandbox.create()


@pytest.mark.parametrize("answer", [
    {"op": "ok", "type": "file", "size": "10", "mode": [1], "mtime": 1e999},
    {"op": "ok", "type": None, "size": True, "mode": None, "mtime": {"a": 1}},
])
def test_stat_answer_with_values_of_the_wrong_type(answer):
    """Regression (atheris, tests/fuzz/fuzz_agent.py): int() of the guest's values raised
    TypeError/OverflowError; they count as 0 now."""
    from kvmvm.sandbox.files import info_from

    e = info_from("/tmp/x", answer)
    assert (e.name, e.size, e.mode, e.mtime) == ("x", 0, 0, 0)


@pytest.mark.parametrize("entries,names", [
    ({"a": 1}, []), (5, []), ("ab", []),
    ([{"name": "a", "size": 3}, {"name": 7}, "b", {"name": "c", "size": "x"}], ["a", "c"]),
])
def test_ls_answer_with_malformed_entries(entries, names):
    from kvmvm.sandbox.files import entries_from

    got = entries_from("/d", {"op": "ok", "entries": entries})
    assert [e.name for e in got] == names
    assert all(isinstance(e.size, int) for e in got)


def test_scratch_disk_is_sparse_ext4_and_copies_keep_holes(tmp_path):
    import json
    import subprocess

    from kvmvm.sandbox import vm as svm

    disk = tmp_path / "scratch.img"
    svm.make_scratch(disk, 256)
    st = disk.stat()
    assert st.st_size == 256 << 20 and st.st_blocks * 512 < 8 << 20      # mostly holes
    info = subprocess.run(["dumpe2fs", "-h", disk], capture_output=True, text=True).stdout
    assert "extent" in info and "has_journal" not in info     # ext4, no journal (dies with its VM)
    with open(disk, "r+b") as f:           # data in the middle and at the end
        f.seek(100 << 20)
        f.write(b"x" * 5000)
        f.seek((256 << 20) - 3)
        f.write(b"end")
    copy = tmp_path / "copy.img"
    svm.sparse_copy(disk, copy)
    assert copy.read_bytes() == disk.read_bytes()
    assert copy.stat().st_blocks <= st.st_blocks + 64
    # a restore swaps in its own copy for the snapshot's scratch drive, nothing else
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "snapshot.json").write_text(json.dumps({"config": {"drives": [
        "/img/root.ext4,ro,id=kvmvm-root", f"{disk},id=kvmvm-scratch"]}}))
    assert svm._with_scratch(snap, copy) == ["/img/root.ext4,ro,id=kvmvm-root", f"{copy},id=kvmvm-scratch"]
    (snap / "snapshot.json").write_text(json.dumps({"config": {"drives": ["/img/root.ext4,ro,id=kvmvm-root"]}}))
    with pytest.raises(SandboxError, match="scratch"):
        svm._with_scratch(snap, copy)


def test_scratch_disk_and_template_key(tmp_path):
    from kvmvm.sandbox import vm as svm

    k, i = tmp_path / "k", tmp_path / "i"
    k.write_bytes(b"k")
    i.write_bytes(b"i")
    img = SimpleNamespace(digest="sha256:" + "0" * 64, rootfs=k, rootfs_type="ext4")
    keys = {svm.template_key(img, 1, 256, k, i, d) for d in (None, 64, 128)}
    assert len(keys) == 3           # the scratch size is part of what a warm snapshot depends on
    with pytest.raises(SandboxError, match="scratch disk"):
        svm.make_scratch(tmp_path / "no-such-dir" / "x.img", 64)


def test_resume_refuses_what_is_not_a_paused_sandbox(tmp_path):
    with pytest.raises(ConfigError, match="not a paused sandbox"):
        Sandbox.resume(str(tmp_path))
