"""`kvmvm image import|ls|rm|prune`, `kvmvm images`, `kvmvm volume`: output and exit status,
through the installed command line, on a private KVMVM_HOME."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests import imagefixtures as fx

ROOT = Path(__file__).resolve().parents[2]
KVMVM = str(ROOT / ".venv" / "bin" / "kvmvm")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli-images")
    return fx.to_oci_archive(fx.build_layered(work), work / "oci.tar")


@pytest.fixture
def kv(tmp_path):
    env = dict(os.environ, KVMVM_HOME=str(tmp_path / "home"))
    env.pop("KVMVM_DEBUG", None)

    def run(*args, **kw):
        e = dict(env, **kw.pop("env", {}))
        return subprocess.run([KVMVM, *args], capture_output=True, text=True, env=e, timeout=120, **kw)

    run.home = tmp_path / "home"
    return run


def _one_line_error(p, code):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.strip().splitlines() if not ln.startswith("kvmvm image: [")]  # progress
    assert len(lines) == 1 and lines[0].startswith("kvmvm: "), p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


def test_import_list_rm(kv, archive):
    p = kv("image", "import", str(archive))
    assert p.returncode == 0, p.stderr
    name, digest = p.stdout.split()
    assert name == "kvmvm-test:1" and digest.startswith("sha256:") and len(digest) == 71
    assert "verified" in p.stderr                   # plain progress lines when not a terminal

    for cmd in (["images"], ["image", "ls"]):
        p = kv(*cmd)
        assert p.returncode == 0
        head, row = p.stdout.splitlines()
        assert head.split() == ["REPOSITORY", "TAG", "DIGEST", "SIZE", "CREATED"]
        assert row.split()[:3] == ["kvmvm-test", "1", digest[7:19]]
    js = json.loads(kv("images", "--json").stdout)
    assert js[0]["digest"] == digest and js[0]["names"] == ["kvmvm-test:1"]
    assert js[0]["rootfs_type"] == "erofs" and Path(js[0]["rootfs"]).is_file()
    assert kv("images", "-q", "--no-trunc").stdout.split() == [digest]

    p = kv("image", "rm", "kvmvm-test:1")
    assert p.returncode == 0 and p.stdout.splitlines() == ["Untagged: kvmvm-test:1", f"Deleted: {digest}"]
    assert kv("images").stdout.splitlines()[1:] == []


def test_import_json_and_quiet(kv, archive):
    p = kv("image", "import", "--json", str(archive))
    assert p.returncode == 0 and p.stderr == ""
    assert json.loads(p.stdout)[0]["names"] == ["kvmvm-test:1"]
    p = kv("image", "import", "-q", "--name", "renamed:2", str(archive))
    assert p.returncode == 0 and p.stderr == "" and p.stdout.split()[0] == "renamed:2"


def test_import_from_stdin(kv, archive):
    with open(archive, "rb") as f:
        p = kv("image", "import", "-q", "-", stdin=f)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0] == "kvmvm-test:1"
    assert "nothing on stdin" in _one_line_error(kv("image", "import", "-", stdin=subprocess.DEVNULL), 2)


def test_errors(kv, archive, tmp_path):
    assert "not found" in _one_line_error(kv("image", "rm", "nope:1"), 1)
    assert "no such file" in _one_line_error(kv("image", "import", str(tmp_path / "nope.tar")), 2)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(archive.read_bytes()[:5000])
    assert "truncated" in _one_line_error(kv("image", "import", str(cut)), 1)
    assert "registry" in _one_line_error(kv("image", "import", "docker://registry.invalid/x:1"), 1)
    # a missing tool names its Debian package
    line = _one_line_error(kv("image", "import", str(archive), env={"PATH": str(tmp_path)}), 1)
    assert "skopeo is not installed" in line and "apt-get install skopeo" in line
    # in use: exit 2
    kv("image", "import", "-q", str(archive))
    from kvmvm.images import ImageStore

    with ImageStore(kv.home / "images").resolve("kvmvm-test:1").use():
        assert "in use" in _one_line_error(kv("image", "rm", "kvmvm-test:1"), 2)


def test_prune(kv, archive, tmp_path):
    kv("image", "import", "-q", str(archive))
    kv("image", "import", "-q", "--name", "kvmvm-test:1", str(fx.to_docker_archive(
        archive.parent / "oci", tmp_path / "d.tar")))                   # the name moves
    p = kv("image", "prune")
    assert p.returncode == 0
    assert p.stdout.splitlines()[0].startswith("Deleted: sha256:")
    assert p.stdout.splitlines()[-1].startswith("Reclaimed: ")
    assert len(json.loads(kv("images", "--json").stdout)) == 1


def test_volume_commands(kv):
    p = kv("volume", "create", "--size", "32", "vol1")
    assert p.returncode == 0 and p.stdout.strip() == "vol1"
    assert "already exists" in _one_line_error(kv("volume", "create", "vol1"), 2)
    p = kv("volume", "ls")
    assert p.stdout.splitlines()[0].split() == ["NAME", "SIZE", "USED", "CREATED", "IN-USE"]
    assert p.stdout.splitlines()[1].split()[0] == "vol1"
    js = json.loads(kv("volume", "ls", "--json").stdout)
    assert js[0]["name"] == "vol1" and js[0]["size"] == 32 << 20 and js[0]["in_use"] is False
    assert kv("volume", "rm", "vol1").returncode == 0
    assert "does not exist" in _one_line_error(kv("volume", "rm", "vol1"), 2)
    assert "not a valid volume name" in _one_line_error(kv("volume", "create", "../x"), 2)
