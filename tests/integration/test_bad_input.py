"""Bad input to `kvmvm boot` and to the Python API: one clear line on stderr, the documented
exit status (2 for a user mistake), never a traceback or "internal error", and nothing left
behind in the directory the command was pointed at."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.integration.conftest import KVMVM, ROOT, TINY_OUT

pytestmark = pytest.mark.host

HELLO = str(TINY_OUT / "hello.elf")
LONG = "x" * 5000

# (id, argv with {t}=temp dir placeholders, status, a fragment of the one stderr line)
CASES = [
    ("kernel-missing", ["--kernel", "{t}/nope.elf"], 2, "kernel image not found"),
    ("kernel-directory", ["--kernel", "{t}"], 2, "is a directory"),
    ("kernel-fifo", ["--kernel", "{t}/fifo"], 2, "not a regular file"),
    ("kernel-dev-zero", ["--kernel", "/dev/zero"], 2, "not a regular file"),
    ("kernel-text", ["--kernel", "{t}/text"], 2, "not an ELF or bzImage"),
    ("kernel-empty", ["--kernel", "{t}/empty"], 2, "not an ELF or bzImage"),
    ("kernel-truncated-elf", ["--kernel", "{t}/trunc.elf"], 2, "trunc.elf"),
    ("kernel-empty-path", ["--kernel", ""], 2, "not found"),
    ("kernel-non-utf8", ["--kernel", b"/tmp/\xff\xfe.elf"], 2, "not found"),
    ("initrd-missing", ["--kernel", HELLO, "--initrd", "{t}/nope"], 2, "initrd not found"),
    ("initrd-fifo", ["--kernel", HELLO, "--initrd", "{t}/fifo"], 2, "not a regular file"),
    ("memory-zero", ["--kernel", HELLO, "--memory", "0"], 2, "--memory must be at least"),
    ("memory-negative", ["--kernel", HELLO, "--memory", "-5"], 2, "--memory"),
    ("memory-huge", ["--kernel", HELLO, "--memory", "99999999999"], 2, "--memory must be at most"),
    ("memory-nan", ["--kernel", HELLO, "--memory", "nan"], 2, "--memory"),
    ("memory-text", ["--kernel", HELLO, "--memory", "lots"], 2, "--memory"),
    ("memory-no-value", ["--kernel", HELLO, "--memory"], 2, "--memory"),
    ("cpus-zero", ["--kernel", HELLO, "--cpus", "0"], 2, "--cpus must be between"),
    ("cpus-too-many", ["--kernel", HELLO, "--cpus", "65"], 2, "--cpus must be between"),
    ("cpus-text", ["--kernel", HELLO, "--cpus", "two"], 2, "--cpus"),
    ("timeout-zero", ["--kernel", HELLO, "--timeout", "0"], 2, "--timeout must be"),
    ("timeout-negative", ["--kernel", HELLO, "--timeout", "-1"], 2, "--timeout must be"),
    ("timeout-nan", ["--kernel", HELLO, "--timeout", "nan"], 2, "--timeout must be"),
    ("timeout-inf", ["--kernel", HELLO, "--timeout", "inf"], 2, "--timeout must be"),
    ("entry-bogus", ["--kernel", HELLO, "--entry", "16"], 2, "--entry"),
    ("virtio-cmdline-bogus", ["--kernel", HELLO, "--virtio-cmdline", "maybe"], 2, "--virtio-cmdline"),
    ("cmdline-too-long", ["--kernel", HELLO, "--cmdline", LONG], 2, "command line is longer than"),
    ("unknown-flag", ["--kernel", HELLO, "--turbo"], 2, "--turbo"),
    ("seccomp-level-3", ["--kernel", HELLO, "--seccomp-level", "3"], 2, "--seccomp-level"),
    ("drive-missing", ["--kernel", HELLO, "--drive", "{t}/nope.img"], 2, "image not found"),
    ("drive-fifo", ["--kernel", HELLO, "--drive", "{t}/fifo"], 2, "not a regular file or block device"),
    ("drive-dev-zero", ["--kernel", HELLO, "--drive", "/dev/zero"], 2, "not a regular file or block device"),
    ("drive-bad-option", ["--kernel", HELLO, "--drive", "{t}/disk.img,fast"], 2, "unknown option"),
    ("drive-ro-value", ["--kernel", HELLO, "--drive", "{t}/disk.img,ro=no"], 2, "ro takes no value"),
    ("drive-direct-value", ["--kernel", HELLO, "--drive", "{t}/disk.img,direct=no"], 2, "direct takes no value"),
    ("drive-id-too-long", ["--kernel", HELLO, "--drive", "{t}/disk.img,id=" + "i" * 21], 2, "longer than 20"),
    ("drive-empty-spec", ["--kernel", HELLO, "--drive", ""], 2, "--drive"),
    ("net-no-tap", ["--kernel", HELLO, "--net", "mac=52:54:00:00:00:01"], 2, "no TAP name"),
    ("net-bad-mac", ["--kernel", HELLO, "--net", "tap=t0,mac=52:54"], 2, "mac must look like"),
    ("net-multicast-mac", ["--kernel", HELLO, "--net", "tap=t0,mac=01:00:5e:00:00:01"], 2, "multicast"),
    ("net-name-too-long", ["--kernel", HELLO, "--net", "tap=" + "n" * 16], 2, "not a valid interface name"),
    ("net-same-tap-twice", ["--kernel", HELLO, "--net", "tap=t0", "--net", "tap=t0"], 2, "same TAP"),
    ("vsock-cid-reserved", ["--kernel", HELLO, "--vsock", "cid=2,uds={t}/v.sock"], 2, "cid must be between"),
    ("vsock-cid-text", ["--kernel", HELLO, "--vsock", "cid=seven,uds={t}/v.sock"], 2, "cid must be a number"),
    ("vsock-uds-too-long", ["--kernel", HELLO, "--vsock", "cid=3,uds={t}/" + "u" * 100], 2, "too long for a Unix socket"),
    ("vsock-uds-no-dir", ["--kernel", HELLO, "--vsock", "cid=3,uds={t}/no/such/v.sock"], 2, "does not exist"),
    ("vsock-uds-regular-file", ["--kernel", HELLO, "--vsock", "cid=3,uds={t}/text"], 2, "not a socket"),
    ("vsock-uds-in-use", ["--kernel", HELLO, "--vsock", "cid=3,uds={t}/live.sock"], 2, "in use by a running process"),
]


@pytest.fixture
def workdir(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "text").write_text("not a kernel\n")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "trunc.elf").write_bytes(open(HELLO, "rb").read()[:100])
    (tmp_path / "disk.img").write_bytes(bytes(4096))
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(tmp_path / "live.sock"))
    live.listen(1)
    yield tmp_path
    live.close()


def _arg(a, t):
    return a if isinstance(a, bytes) else a.replace("{t}", str(t))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tiny_images, workdir, case):
    _, argv, status, fragment = case
    before = sorted(os.listdir(workdir))
    p = subprocess.run([*KVMVM, "boot", *[_arg(a, workdir) for a in argv]], cwd=ROOT,
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == status, (p.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kvmvm: ") and fragment in lines[0], err
    assert "Traceback" not in err and "internal error" not in err
    assert sorted(os.listdir(workdir)) == before, "something was left behind"


def test_closed_stdio(tiny_images, kvm_ok):
    """stdin, stdout and stderr closed: the VM still runs and ends with its own status."""
    code = ("import os, subprocess, sys; "
            f"r = subprocess.run({[*KVMVM, 'boot', '--kernel', str(TINY_OUT / 'exitcode.elf'), '--cmdline', '3', '--json']!r}, "
            "stdin=subprocess.DEVNULL if False else None, close_fds=True, "
            "preexec_fn=lambda: [os.close(fd) for fd in (0, 1, 2)]); sys.exit(r.returncode)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60, capture_output=True)
    assert p.returncode == 7, p.stderr


def test_api_bad_config_is_a_value_error():
    from kvmvm.errors import ConfigError
    from kvmvm.machine import MachineConfig, boot

    for kw in ({"memory_mib": -1}, {"cpus": 0}, {"timeout": float("nan")},
               {"kernel": "/dev/zero"}, {"entry": "x"}):
        cfg = MachineConfig(**{"kernel": HELLO, **kw})
        with pytest.raises(ValueError) as e:
            boot(cfg)
        assert isinstance(e.value, ConfigError)
