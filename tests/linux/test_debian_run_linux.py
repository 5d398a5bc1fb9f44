"""PENDING (not collected): passed 3 of 3 alone in the test host (436 s, most of it the
image import inside L1); in the full linux-tier run of stop 17 its first two tests passed
and the third (six Debian runs) was still going after 20 minutes when the stop ended.
Rename to test_debian_run_linux.py once it passes alongside the other linux files in a
time that fits CI's test-host limit. `kvmvm run` of a real Debian image (linux tier).

The image is tests/debianimage.py's: bookworm minbase from mmdebstrap, then a layer with
whiteouts (a file and a directory of the base deleted) and an opaque /etc/skel, then a small
third layer. The L1 has no network: scripts/test.sh builds (or finds) the image in the cache
on the host before the linux tier, because this file names debianimage; here it is imported
into kvmvm's store as a user would (`kvmvm image import`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests import debianimage as deb

KVMVM = [sys.executable, "-m", "kvmvm"]
IMAGE = f"kvmvm-debian-test:{uuid.uuid4().hex[:8]}"
TIMEOUT = 300            # one `kvmvm run`; an overstaying run fails with what it printed
# the module's first test also imports the 78 MB image inside the emulated L1 (skopeo, digest
# checks, umoci, mkfs.erofs: 13 s on the host, many times that under TCG)
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def image():
    img = deb.get()             # inside L1: only from the cache (an error names the fix)
    r = subprocess.run([*KVMVM, "image", "import", "--name", IMAGE, img.ref],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    yield IMAGE, img
    r = subprocess.run([*KVMVM, "image", "rm", IMAGE], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def xdg():
    d = tempfile.mkdtemp(prefix="kd")
    yield d
    run_dir = Path(d, "kvmvm", "run")
    left = [p.name for p in run_dir.iterdir() if not p.name.startswith(".")] if run_dir.exists() else []
    shutil.rmtree(d, ignore_errors=True)
    assert left == [], "a run left its directory behind"


def run(xdg, *args, timeout=TIMEOUT):
    """`kvmvm run ARGS` in its own process group; an overstaying run is killed, group and all."""
    env = dict(os.environ, XDG_RUNTIME_DIR=xdg, PYTHONFAULTHANDLER="1")
    p = subprocess.Popen([*KVMVM, "run", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=30)
        raise AssertionError(f"kvmvm run {args} overstayed {timeout} s\n--- stderr:\n{err[-6000:]}")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_debian_default_cmd_and_version(image, xdg):
    r = run(xdg, image[0])                       # the image's Cmd: cat /etc/debian_version
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().split(".")[0] == "12", r.stdout
    r = run(xdg, image[0], "bash", "-c",
            "apt-get --version | head -1; dpkg-query -W -f '${Status}\\n' apt; echo $KVMVM_TEST; pwd; "
            "kvmvm-hello from-guest; cat /etc/kvmvm-release")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("apt 2."), lines
    assert lines[1:] == ["install ok installed", "debian", "/root", "hello from layer 3: from-guest",
                         deb.RELEASE[1].decode().strip()]


def test_whiteouts_seen_from_the_guest(image, xdg):
    img = image[1]
    checks = (f"test -e /{deb.DELETED_FILE} && echo file-present || echo file-gone; "
              f"test -e /{deb.DELETED_DIR} && echo dir-present || echo dir-gone; "
              "test -e /etc/issue.net && echo neighbour-kept; "
              f"cd /{deb.OPAQUE_DIR} && find . -mindepth 1 | sort; "
              "find / -xdev -name '.wh.*' | head -3; echo end")
    r = run(xdg, image[0], "sh", "-c", checks)
    assert r.returncode == 0, r.stderr
    expect = ["file-gone", "dir-gone", "neighbour-kept"]
    expect += sorted("./" + n[len(deb.OPAQUE_DIR) + 1:] for n in [*deb.OPAQUE_FILES, f"{deb.OPAQUE_DIR}/sub"])
    assert r.stdout.splitlines() == [*expect, "end"], r.stdout
    assert all(h.startswith(deb.OPAQUE_DIR + "/.") for h in img.base_opaque_files)   # .bashrc & co: gone


def test_exit_codes_and_private_writes(image, xdg):
    name = image[0]
    r = run(xdg, name, "bash", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    r = run(xdg, name, "no-such-command")
    assert r.returncode == 127, r.stderr
    r = run(xdg, name, "/etc/debian_version")   # a file, not executable
    assert r.returncode == 126, r.stderr
    r = run(xdg, name, "bash", "-c", "kill -9 $$")
    assert r.returncode == 128 + 9, r.stderr
    # writes stay in their run: deleting a base file and adding one are gone next time
    r = run(xdg, name, "sh", "-c", "rm /etc/debian_version && echo new > /etc/new-file && ls /etc/new-file")
    assert r.returncode == 0 and r.stdout == "/etc/new-file\n", r.stderr
    r = run(xdg, name, "sh", "-c", "cat /etc/debian_version; test -e /etc/new-file && echo leaked || echo private")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1] == "private" and r.stdout.startswith("12."), r.stdout
