"""Named ext4 volumes and read-only host directories, with real mkfs and mounts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import imagefixtures as fx

from kvmvm.images.errors import VolumeError
from kvmvm.images.hostdir import pack_readonly, packed, reclaim
from kvmvm.images.volumes import VolumeStore


def test_volume_created_once_and_keeps_data(tmp_path):
    vs = VolumeStore(tmp_path / "volumes")
    p = vs.get_or_create("data", size_mib=64)
    assert p == tmp_path / "volumes" / "data.ext4"
    assert p.stat().st_size == 64 << 20 and p.stat().st_blocks * 512 < 16 << 20    # sparse
    info = fx.sh("dumpe2fs", "-h", p).stdout
    assert "Filesystem volume name:   data" in info and "has_journal" in info
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fx.sh("mount", "-o", "loop", p, mnt)
    try:
        assert os.stat(mnt).st_uid == 0
        (mnt / "kept").write_text("across runs\n")
    finally:
        fx.sh("umount", mnt)
    assert vs.get_or_create("data", size_mib=999) == p               # not made again
    with fx.mounted(p, "ext4") as m:
        assert (m / "kept").read_text() == "across runs\n"
    assert [v.name for v in vs.list()] == ["data"]


def test_volume_lock_is_exclusive(tmp_path):
    vs = VolumeStore(tmp_path / "volumes")
    vs.get_or_create("shared", size_mib=16)
    with vs.lock("shared") as p:
        assert p.name == "shared.ext4"
        with pytest.raises(VolumeError, match="in use"):
            with vs.lock("shared"):
                pass
        assert vs.get("shared").in_use
        with pytest.raises(VolumeError, match="in use"):
            vs.remove("shared")
    assert not vs.get("shared").in_use
    vs.remove("shared")
    assert vs.list() == []
    with pytest.raises(VolumeError, match="16 MiB"):
        vs.get_or_create("tiny", size_mib=1)


def test_pack_readonly(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("hello\n")
    os.symlink("sub/f", src / "link")
    os.chown(src / "sub" / "f", 1234, 5678)
    out = tmp_path / "out"
    path, fstype = pack_readonly(src, out)
    assert fstype == "erofs" and path.parent == out and path.stat().st_mode & 0o222 == 0
    with fx.mounted(path, fstype) as m:
        assert fx.snapshot(m) == fx.snapshot(src)
    with packed(src, out) as (p2, _):
        assert p2.exists()
    assert not p2.exists()
    with pytest.raises(VolumeError, match="not a directory"):
        pack_readonly(src / "sub" / "f", out)


def test_hostdir_leftovers_of_dead_processes_reclaimed(tmp_path, monkeypatch):
    monkeypatch.setenv("KVMVM_HOME", str(tmp_path / "home"))
    src = tmp_path / "src"
    src.mkdir()
    code = "import sys; from kvmvm.images.hostdir import pack_readonly; print(pack_readonly(sys.argv[1])[0])"
    left = Path(subprocess.run([str(Path(__file__).resolve().parents[2] / ".venv/bin/python"), "-c", code, str(src)],
                               capture_output=True, text=True, check=True).stdout.strip())
    assert left.exists()
    assert reclaim() == 1 and not left.exists()
