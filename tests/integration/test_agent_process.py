"""The real guest agent (guest-images/agent, static musl C) as a host process on a
socketpair (`kvmvm-agent --fd N`): its protocol parser, flow control and process handling,
driven by kvmvm's own host side. The same binary is PID 1 of container VMs (linux tier)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from kvmvm.agent import protocol as p
from kvmvm.agent.initramfs import agent_binary
from kvmvm.agent.session import AgentError, Session


# sha256 of `seq 1 9000000 | head -c 67108864` (64 MiB of numbered lines: order matters)
SEQ_SHA256 = "d07e1bf9614185eac008cfa31cf516978d2fed62b7bf5880e35ee9a6f5f90459"


@pytest.fixture
def agent():
    a, b = socket.socketpair()
    proc = subprocess.Popen([str(agent_binary()), "--fd", str(b.fileno())], pass_fds=(b.fileno(),),
                            stderr=subprocess.PIPE, text=True)
    b.close()
    s = Session(a)
    s.handshake(10)
    s.proc = proc
    yield s
    s.close()
    proc.wait(10)


def test_hello_names_version_and_capabilities(agent):
    assert agent.hello["version"] == 1
    assert {"exec", "tty", "signal", "resize", "files", "multi-exec"} <= set(agent.hello["capabilities"])
    assert agent.hello["window"] == p.WINDOW and agent.hello["max_frame"] == p.MAX_PAYLOAD


@pytest.mark.parametrize("script,status", [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 128 + 9),
                                            ("kill -TERM $$", 128 + 15)])
def test_exit_statuses(agent, script, status):
    assert agent.run(["sh", "-c", script])[0] == status


def test_not_found_is_127_and_not_executable_126(agent, tmp_path):
    with pytest.raises(AgentError) as ei:
        agent.run(["no-such-program-kvmvm"])
    assert ei.value.code == 127 and "not found" in ei.value.reason
    f = tmp_path / "data"
    f.write_text("not a program")
    with pytest.raises(AgentError) as ei:
        agent.run([str(f)])
    assert ei.value.code == 126 and "Permission denied" in ei.value.reason


def test_stdout_and_stderr_apart_and_in_order(agent):
    rc, out, err = agent.run(["sh", "-c", "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done"])
    assert rc == 0
    assert out == b"".join(b"out%d\n" % i for i in range(1, 6))
    assert err == b"".join(b"err%d\n" % i for i in range(1, 6))


def test_64_mib_of_output_with_a_slow_reader(agent):
    """The agent sends only what we granted: a slow consumer stalls the process, loses nothing."""
    st = agent.exec(["sh", "-c", "seq 1 9000000 | head -c 67108864"])
    h, got = hashlib.sha256(), 0
    slow_until = time.monotonic() + 1.0
    while not st.done or st.out[p.STDOUT]:
        agent.pump(0.2)
        assert len(st.out[p.STDOUT]) <= p.WINDOW      # never more than the window is buffered here
        if time.monotonic() < slow_until:
            time.sleep(0.05)                           # a slow reader for a while
        data = st.take(p.STDOUT)
        h.update(data)
        got += len(data)
    assert st.exit_status == 0 and got == 64 << 20
    assert h.hexdigest() == SEQ_SHA256


def test_stdin_streams_in_and_eof_ends_it(agent):
    data = os.urandom(3 << 20)
    rc, out, _ = agent.run(["sh", "-c", "cat | sha256sum"], input=data, timeout=60)
    assert rc == 0 and out.split()[0].decode() == hashlib.sha256(data).hexdigest()
    rc, out, _ = agent.run(["wc", "-c"], input=b"")
    assert (rc, out.strip()) == (0, b"0")


def test_tty_gets_a_terminal_and_its_size(agent):
    rc, out, _ = agent.run(["sh", "-c", "tty; stty size; test -t 0 && echo interactive"], tty=True, rows=33, cols=101)
    lines = out.decode().split("\r\n")
    assert rc == 0 and lines[0].startswith("/dev/pts/") and lines[1] == "33 101" and lines[2] == "interactive"


def test_resize_reaches_the_tty(agent):
    st = agent.exec(["sh", "-c", "trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 0.05; done"],
                    tty=True, rows=10, cols=20)
    buf = bytearray()
    while b"ready" not in buf:
        agent.pump(0.2)
        buf += st.take(p.STDOUT)
    st.resize(40, 120)
    while not st.done:
        agent.pump(0.2)
        buf += st.take(p.STDOUT)
    assert b"40 120" in buf and st.exit_status == 0


def test_signal_is_delivered(agent):
    st = agent.exec(["sh", "-c", "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done"])
    buf = bytearray()
    while b"ready" not in buf:
        agent.pump(0.2)
        buf += st.take(p.STDOUT)
    st.signal(signal.SIGTERM)
    while not st.done:
        agent.pump(0.2)
        buf += st.take(p.STDOUT)
    assert st.exit_status == 7 and b"got-term" in buf


def test_concurrent_execs_in_one_session(agent):
    sts = [agent.exec(["sh", "-c", f"sleep 0.{i}; echo n{i}; exit {i}"]) for i in range(1, 6)]
    outs = {st.id: bytearray() for st in sts}
    while not all(st.done for st in sts):
        agent.pump(0.2)
        for st in sts:
            outs[st.id] += st.take(p.STDOUT)
    assert [st.exit_status for st in sts] == [1, 2, 3, 4, 5]
    assert [bytes(outs[st.id]) for st in sts] == [b"n%d\n" % i for i in range(1, 6)]


def test_env_cwd_user_umask(agent, tmp_path):
    rc, out, _ = agent.run(["sh", "-c", "echo $FOO; pwd; id -u; umask"], env=["FOO=bar", "PATH=/usr/bin:/bin"],
                           cwd=str(tmp_path), user="nobody", umask=0o027)
    assert rc == 0
    foo, cwd, uid, umask = out.decode().split()
    assert (foo, cwd, uid, umask) == ("bar", str(tmp_path), "65534", "0027")
    with pytest.raises(AgentError) as ei:
        agent.run(["true"], user="no-such-user-kvmvm")
    assert ei.value.code == 126 and "unable to find user no-such-user-kvmvm" in ei.value.reason


def test_files_put_and_get(agent, tmp_path):
    data = os.urandom(1 << 20) + b"tail"
    target = tmp_path / "sub" / "f.bin"
    assert agent.put_file(str(target), data, mode=0o600, parents=True) == len(data)
    assert target.read_bytes() == data and (target.stat().st_mode & 0o777) == 0o600
    assert agent.get_file(str(target)) == data
    with pytest.raises(AgentError, match="No such file"):
        agent.get_file(str(tmp_path / "missing"))
    with pytest.raises(AgentError, match="not a regular file"):
        agent.get_file(str(tmp_path))


def test_setup_is_refused_outside_a_vm(agent):
    with pytest.raises(AgentError, match="not the VM's init"):
        agent.request("setup", rootfs={"dev": "/dev/vda", "type": "ext4"})


# --- a host that breaks the rules: the agent ends the session with one line ---

def _raw_agent():
    a, b = socket.socketpair()
    proc = subprocess.Popen([str(agent_binary()), "--fd", str(b.fileno())], pass_fds=(b.fileno(),),
                            stderr=subprocess.PIPE, text=True)
    b.close()
    a.settimeout(5)
    hello = p.Decoder()
    frames = []
    while not frames:
        frames = hello.feed(a.recv(4096))
    assert frames[0].type == p.HELLO
    return a, proc


@pytest.mark.parametrize("blob,why", [
    (p.encode_json(0, p.CONTROL, {"op": "ping"}), "first frame is not HELLO"),
    (p.encode_json(0, p.HELLO, {"version": 9}), "unsupported protocol version"),
    (p.encode_json(0, p.HELLO, {"version": 1}) + p.HDR.pack(0, p.DATA, 0, 0, p.MAX_PAYLOAD + 1), "longer than the limit"),
    (p.encode_json(0, p.HELLO, {"version": 1}) + p.HDR.pack(0, 77, 0, 0, 0), "unknown frame type"),
    (p.encode_json(0, p.HELLO, {"version": 1}) + p.encode(0, p.CONTROL, 0, b'{"op": "exec", "argv": [}'), "not a JSON object"),
    (p.encode_json(0, p.HELLO, {"version": 1}) + p.encode(0, p.CONTROL, 0, b"[" * 100 + b"]" * 100), "not a JSON object"),
    (p.encode_json(0, p.HELLO, {"version": 1}) * 2, "second HELLO"),
    (p.encode_json(0, p.HELLO, {"version": 1})
     + p.encode_json(5, p.CONTROL, {"op": "exec", "argv": ["sleep", "5"], "stdin": True})
     # the window plus what a pipe buffers while the agent runs (the process never reads):
     # more than that breaks the rule whatever order the agent works in
     + p.encode(5, p.DATA, 0, b"x" * p.DATA_CHUNK) * 12, "more bytes than its credit"),
    (p.encode_json(0, p.HELLO, {"version": 1}) + p.encode_credit(0, p.STDIN, 1), "credit for its own channel"),
])
def test_malformed_host_input_ends_the_session(blob, why):
    a, proc = _raw_agent()
    try:
        a.sendall(blob)
    except OSError:
        pass
    rc = proc.wait(10)
    err = proc.stderr.read()
    a.close()
    assert rc == 0
    assert why in err and len(err.strip().splitlines()) <= 2, err


def test_json_strings_survive_escapes_and_unicode(agent):
    """kvmvm's JSON escapes non-ASCII (surrogate pairs too) and quotes; the agent's decoder
    gives the process the exact bytes."""
    words = ["é", "☃", "𝄞", '"quoted" \\ back', "tab\there", "new\nline"]
    rc, out, _ = agent.run(["printf", "%s|"] + words)
    assert rc == 0 and out.decode() == "|".join(words) + "|"


def test_bad_requests_get_errors_not_crashes(agent):
    with pytest.raises(AgentError, match="argv"):
        agent.run([])
    st = agent._new_stream("exec")
    agent._send(p.encode_json(st.id, p.CONTROL, {"op": "exec", "argv": ["true"], "cwd": "relative"}))
    agent._wait(lambda: st.done, 10, "exec")
    assert st.result["op"] == "error" and "cwd" in st.result["reason"]
    assert agent.request("ping")["op"] == "ok"      # the session goes on
