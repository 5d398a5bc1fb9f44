"""`kvmvm run`'s own logic on any host: the VM is replaced by the agent as a host process
(fakevm_run.py), everything else is the real command: flags, stdio with backpressure, the
raw terminal and its size, signals, --timeout, exit statuses, the run directory."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

FAKE = [sys.executable, str(Path(__file__).with_name("fakevm_run.py"))]


@pytest.fixture
def env(tmp_path):
    rootfs = tmp_path / "rootfs.img"
    with open(rootfs, "wb") as f:         # --rootfs only checks the ext4 magic here
        f.truncate(4096)
        f.seek(1024 + 56)
        f.write(b"\x53\xef")
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    yield dict(os.environ, FAKEVM_ROOTFS=str(rootfs), XDG_RUNTIME_DIR=str(xdg))
    assert [p for p in (xdg / "kvmvm" / "run").glob("*") if not p.name.startswith(".")] == []


def run(env, *args, **kw):
    return subprocess.run([*FAKE, *args], env=env, capture_output=True, timeout=60, **kw)


def test_statuses_and_streams(env):
    r = run(env, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    r = run(env, "--", "sh", "-c", "kill -9 $$")
    assert r.returncode == 137
    r = run(env, "--", "no-such-program-kvmvm")
    assert r.returncode == 127 and r.stderr.count(b"\n") == 1


def test_stdin_only_with_i(env):
    data = os.urandom(2 << 20)
    r = run(env, "-i", "--", "sha256sum", input=data)
    assert r.returncode == 0 and r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    r = run(env, "--", "sh", "-c", "cat; echo done", input=b"ignored")
    assert r.stdout == b"done\n"


def test_slow_reader_loses_nothing(env):
    p = subprocess.Popen([*FAKE, "--", "sh", "-c", "seq 1 2000000"], env=env, stdout=subprocess.PIPE)
    time.sleep(1.0)                      # the pipe fills; kvmvm must wait, not buffer or drop
    out = p.stdout.read()
    assert p.wait(60) == 0
    assert out == "".join(f"{i}\n" for i in range(1, 2000001)).encode()


def test_tty_size_and_resize(env):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 37, 111, 0, 0))
    p = subprocess.Popen([*FAKE, "-i", "-t", "--", "sh", "-c",
                          "stty size; trap 'stty size; exit 4' WINCH; echo ready; while :; do sleep 0.05; done"],
                         stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env, start_new_session=True)
    os.close(slave)
    buf = b""
    while b"ready" not in buf:
        buf += os.read(master, 4096)
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
    p.send_signal(signal.SIGWINCH)
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
    assert p.wait(30) == 4, p.stderr.read()
    assert b"37 111" in buf and b"50 132" in buf


def test_sigterm_forwarded_and_double_sigint_stops(env):
    p = subprocess.Popen([*FAKE, "--", "sh", "-c", "trap 'echo term; exit 5' TERM; trap '' INT; echo ready; "
                          "while :; do sleep 0.05; done"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 5 and p.stdout.read() == b"term\n"
    p = subprocess.Popen([*FAKE, "--", "sh", "-c", "trap '' INT; echo ready; while :; do sleep 0.05; done"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    p.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert p.poll() is None                      # the container ignores one ^C
    p.send_signal(signal.SIGINT)
    assert p.wait(30) == 130 and b"interrupted twice" in p.stderr.read()
    time.sleep(0.5)                              # the stopped "VM" took its process with it
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "trap '' INT; echo ready; while" not in ps


def test_timeout(env):
    t0 = time.monotonic()
    r = run(env, "--timeout", "1", "--", "sleep", "30")
    assert r.returncode == 137 and b"--timeout" in r.stderr and time.monotonic() - t0 < 20


def test_image_config_flags_reach_the_process(env, tmp_path):
    envfile = tmp_path / "env"
    envfile.write_text("FROM_FILE=1\n")
    r = run(env, "-e", "A=b c", "--env-file", str(envfile), "-w", str(tmp_path), "-u", "nobody",
            "--hostname", "hn", "--", "sh", "-c", 'echo "$A|$FROM_FILE|$HOSTNAME"; pwd; id -u')
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ["b c|1|hn", str(tmp_path), "65534"]


def test_files_and_dev_null_as_stdio(env, tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(b"".join(b"%d\n" % i for i in range(100000)))
    with open(src, "rb") as i, open(dst, "wb") as o:
        assert subprocess.run([*FAKE, "-i", "--", "wc", "-l"], stdin=i, stdout=o, env=env, timeout=60).returncode == 0
    assert dst.read_bytes().strip() == b"100000"
    with open(os.devnull, "rb") as i, open(os.devnull, "wb") as o:
        assert subprocess.run([*FAKE, "-i", "--", "cat"], stdin=i, stdout=o, env=env, timeout=60).returncode == 0
