"""Applying layers: GNU tar's fast path (kvmvm/images/layers.py), umoci when a layer is not
plain, and the merged tree staged in /dev/shm. The fast path is also what
test_image_store.py and test_debian_image.py compare with podman's own tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import imagefixtures as fx

from kvmvm.images import ImageStore, layers, rootfs, store as store_mod


def _layer(path: Path, build) -> Path:
    t = fx._Tar(path)
    build(t)
    t.close()
    return path


def _layout(layout: Path, tars: list[Path]) -> Path:
    fx.sh("umoci", "init", "--layout", layout)
    fx.sh("umoci", "new", "--image", f"{layout}:{fx.TAG}")
    for t in tars:
        fx.sh("umoci", "raw", "add-layer", "--image", f"{layout}:{fx.TAG}", t)
    return layout


def test_plan_whiteouts_opaque_and_replacements(tmp_path):
    root = tmp_path / "root"
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "a").write_text("a")
    (root / "keep").mkdir()
    (root / "keep" / "x").write_text("x")
    (root / "f").write_text("f")
    (root / "gone").write_text("g")
    os.symlink("keep", root / "link")

    def build(t):
        t.file("d/.wh..wh..opq", b"")
        t.file(".wh.gone", b"")
        t.file("f", b"new")                 # replaces a file: removed first, never written through
        t.dir("link")                      # a symlink becomes a directory
        t.dir("keep")                      # a directory stays: its lower contents too
        t.file("new", b"n")

    plan = layers.plan(_layer(tmp_path / "l.tar", build), None, root)
    assert sorted(plan) == ["d/a", "d/sub", "f", "gone", "link"]


@pytest.mark.parametrize("case", ["through_lower_symlink", "through_layer_symlink", "dotdot",
                                  "hardlink_through_symlink", "below_a_file"])
def test_plan_refuses_what_needs_umoci(tmp_path, case):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("/etc", root / "etc-link")
    (root / "file").write_text("x")
    build = {
        "through_lower_symlink": lambda t: t.file("etc-link/passwd", b"owned"),
        "through_layer_symlink": lambda t: (t.symlink("s", "/etc"), t.file("s/passwd", b"owned")),
        "dotdot": lambda t: t.file("a/../../passwd", b"owned"),
        "hardlink_through_symlink": lambda t: t.hardlink("h", "etc-link/passwd"),
        "below_a_file": lambda t: t.file("file/x", b"x"),
    }[case]
    with pytest.raises(layers.Unplain):
        layers.plan(_layer(tmp_path / "l.tar", build), None, root)


@pytest.mark.skipif(os.geteuid() != 0, reason="the fast path runs as root only; umoci otherwise")
def test_symlink_escape_falls_back_to_umoci_inside_the_root(tmp_path):
    """A layer that writes through a lower layer's absolute symlink: umoci resolves it
    inside the root (as podman does); nothing is written on the host."""
    outside = tmp_path / "outside"
    outside.mkdir()
    l1 = _layer(tmp_path / "l1.tar", lambda t: (t.dir("target"), t.symlink("esc", str(outside))))
    l2 = _layer(tmp_path / "l2.tar", lambda t: t.file("esc/owned", b"x"))
    with pytest.raises(layers.Unplain):
        layers.apply([(l1, None), (l2, None)], tmp_path / "direct")
    layout = _layout(tmp_path / "oci", [l1, l2])
    dest = tmp_path / "tree"
    rootfs.unpack(layout, fx.TAG, dest)
    assert not (outside / "owned").exists()
    assert os.readlink(dest / "esc") == str(outside)
    assert (dest / str(outside).lstrip("/") / "owned").read_bytes() == b"x"


def test_umoci_path_matches_the_tar_path(tmp_path, monkeypatch):
    """The same image applied by umoci (KVMVM_IMPORT_TAR=0) and by tar: identical trees."""
    layout = fx.build_layered(tmp_path / "img")
    trees = {}
    for how in ("1", "0"):
        monkeypatch.setenv("KVMVM_IMPORT_TAR", how)
        dest = tmp_path / f"tree-{how}"
        rootfs.unpack(layout, fx.TAG, dest)
        trees[how] = fx.snapshot(dest)
    assert len(trees["1"]) > 20
    assert trees["1"] == trees["0"]


def test_tree_staged_in_memory_and_reclaimed(tmp_path, monkeypatch):
    layout_dir = tmp_path / "img"
    archive = fx.to_docker_archive(fx.build_layered(layout_dir), tmp_path / "d.tar")
    store = ImageStore(tmp_path / "images")
    seen = []
    real = rootfs.unpack

    def spy(layout, ref, dest):
        seen.append(dest)
        return real(layout, ref, dest)

    monkeypatch.setattr(rootfs, "unpack", spy)
    (img,) = store.import_(str(archive))
    assert img.rootfs.is_file()
    assert seen and seen[0].parent.parent == store_mod.SHM and seen[0].parent.name.startswith(store_mod.SHM_PREFIX)
    assert not seen[0].parent.exists()
    # a killed import's tree in /dev/shm is removed by the next import (its owner lock is free)
    code = ("import sys, os; from kvmvm.images import ImageStore, store as s; st = ImageStore(sys.argv[1]);"
            "cm = st._staging(s.SHM, s.SHM_PREFIX); w = cm.__enter__(); print(w, flush=True);"
            "(w / 'half').write_bytes(b'x' * 4096); os._exit(9)")
    left = Path(subprocess.run([sys.executable, "-c", code, str(store.root)], capture_output=True,
                               text=True).stdout.strip())
    assert left.name.startswith(store_mod.SHM_PREFIX) and left.exists()
    store.reclaim()
    assert not left.exists()


def test_tree_on_disk_when_memory_is_short(tmp_path, monkeypatch):
    monkeypatch.setattr(rootfs, "shm_fits", lambda shm, size: False)
    archive = fx.to_docker_archive(fx.build_layered(tmp_path / "img"), tmp_path / "d.tar")
    store = ImageStore(tmp_path / "images")
    seen = []
    real = rootfs.unpack
    monkeypatch.setattr(rootfs, "unpack", lambda l, r, d: (seen.append(d), real(l, r, d))[1])
    (img,) = store.import_(str(archive))
    assert img.rootfs.is_file() and seen[0].parent.parent == store.tmp


def test_shm_fits_bounds():
    assert rootfs.shm_fits(store_mod.SHM, 1 << 20)
    assert not rootfs.shm_fits(store_mod.SHM, 1 << 50)


def test_tree_on_disk_when_memory_fills_up(tmp_path, monkeypatch):
    """ENOSPC in /dev/shm (or any failure there): the layers are applied again on disk."""
    archive = fx.to_docker_archive(fx.build_layered(tmp_path / "img"), tmp_path / "d.tar")
    store = ImageStore(tmp_path / "images")
    seen = []
    real = rootfs.unpack

    def full_shm(layout, ref, dest):
        seen.append(dest)
        if dest.parent.parent == store_mod.SHM:
            raise OSError(28, "No space left on device")
        return real(layout, ref, dest)

    monkeypatch.setattr(rootfs, "unpack", full_shm)
    (img,) = store.import_(str(archive))
    assert [d.parent.parent for d in seen] == [store_mod.SHM, store.tmp]
    assert img.rootfs.is_file() and not seen[0].parent.exists()


def test_a_member_hidden_from_tarfile_sends_the_layer_to_umoci(tmp_path):
    """A header tarfile stops at but GNU tar skips over: the member after it (a write through
    a lower layer's symlink) is seen by tar's own listing, so tar never extracts the layer."""
    outside = tmp_path / "outside"
    outside.mkdir()
    l1 = _layer(tmp_path / "l1.tar", lambda t: t.symlink("esc", str(outside)))
    l2 = _layer(tmp_path / "l2.tar", lambda t: (t.file("ok", b"1"), t.file("bad", b"2"),
                                                t.file("esc/owned", b"x")))
    data = bytearray(l2.read_bytes())
    import tarfile
    with tarfile.open(l2) as tf:
        bad = tf.getmember("bad").offset
    data[bad + 148:bad + 156] = b"0000000\0"          # its checksum field: now wrong
    l2.write_bytes(bytes(data))
    with tarfile.open(l2) as tf:
        assert [m.name for m in tf] == ["ok"]          # tarfile stops there silently
    root = tmp_path / "root"
    with pytest.raises(layers.Unplain):
        layers.apply([(l1, None), (l2, None)], root)
    assert list(outside.iterdir()) == []
