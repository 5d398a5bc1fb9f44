"""The Debian test image (tests/debianimage.py) through kvmvm's real image store, no VM.

The image is a bookworm minbase rootfs made by mmdebstrap plus two layers of ours: whiteouts
of a file and a directory of the base, and an opaque /etc/skel. The rootfs kvmvm builds is
checked path by path against what the layers say and against podman's own merged tree of the
same image, and Debian's binaries are run from it (chroot). Its build is slow the first
time (~75-95 s: mmdebstrap fetches from the Debian mirror) and cached by its inputs outside
the clone; it is never skipped (a missing mmdebstrap, umoci or skopeo fails the test).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests import debianimage as deb
from tests import imagefixtures as fx

from kvmvm.images import ImageStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def debian():
    return deb.get()


@pytest.fixture(scope="module")
def imported(debian, tmp_path_factory):
    """The image imported into a private store, and its EROFS rootfs mounted read-only."""
    store = ImageStore(tmp_path_factory.mktemp("debian-store") / "images")
    (img,) = store.import_(debian.ref, name="kvmvm-debian:test")
    with fx.mounted(img.rootfs, "erofs") as mnt:
        yield img, mnt


def test_layout_is_valid_and_cached(debian):
    check = deb.validate(debian.layout)                # umoci stat + skopeo inspect
    assert check["config"]["config"]["Cmd"] == list(deb.CMD)
    assert debian.meta["inputs"] == deb.inputs()
    assert debian.dir == deb.cache_root() / deb.key_of(deb.inputs())
    # outside the clone, published complete: no temporary or older build beside it
    root = Path(__file__).resolve().parents[2]
    assert root not in debian.dir.parents
    assert [p.name for p in deb.cache_root().iterdir() if p.is_dir()] == [debian.dir.name]
    # asked again: the same build, not a new one
    again = deb.get()
    assert again.dir == debian.dir and again.meta["built_at"] == debian.meta["built_at"]
    # the image is small: minbase without docs, man pages or locales
    assert debian.meta["base_tar_bytes"] < 100 << 20, debian.meta["base_tar_bytes"]
    print(f"debian test image: base tar {debian.meta['base_tar_bytes'] / 2**20:.1f} MiB, "
          f"layout {debian.meta['layout_bytes'] / 2**20:.1f} MiB, built in {debian.meta.get('build_s')} s")


def test_cache_key_follows_every_input(monkeypatch):
    base = deb.inputs()
    k = deb.key_of(base)
    for field, value in (("suite", "trixie"), ("variant", "apt"), ("packages", ["curl"]),
                         ("mmdebstrap", "0.0"), ("builder", deb.BUILDER_VERSION + 1)):
        assert deb.key_of(dict(base, **{field: value})) != k, field
    monkeypatch.setattr(deb, "PACKAGES", ("less",))
    assert deb.key_of(deb.inputs()) != k
    monkeypatch.setattr(deb, "PACKAGES", ())
    monkeypatch.setattr(deb, "DELETED_FILE", "etc/issue.net")
    assert deb.key_of(deb.inputs()) != k


def test_three_layers_and_config(debian, imported):
    img, _ = imported
    assert len(img.layers) == 3
    assert img.config["Cmd"] == list(deb.CMD) and img.config["Env"] == list(deb.ENV)
    assert img.rootfs_type == "erofs"
    man = fx.manifest_of(debian.layout, deb.TAG)
    assert [l["digest"] for l in man["layers"]] == debian.meta["layers"]


def test_rootfs_is_a_sound_erofs(imported):
    img, _ = imported
    r = subprocess.run(["fsck.erofs", str(img.rootfs)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout


def test_whiteouts_applied(debian, imported):
    _, mnt = imported
    # a file and a directory of the base, deleted by layer 2
    assert (mnt / "etc").is_dir()
    assert not os.path.lexists(mnt / deb.DELETED_FILE)
    assert not os.path.lexists(mnt / deb.DELETED_DIR)
    assert (mnt / "etc/issue.net").is_file()            # its neighbour stays
    # the opaque directory holds only layer 2's files, none of the base's
    assert debian.base_opaque_files                     # .bashrc, .profile, .bash_logout
    for hidden in debian.base_opaque_files:
        assert not os.path.lexists(mnt / hidden), hidden
    got = sorted(str(p.relative_to(mnt)) for p in (mnt / deb.OPAQUE_DIR).rglob("*"))
    assert got == sorted([*deb.OPAQUE_FILES, "etc/skel/sub"])
    for name, data in deb.OPAQUE_FILES.items():
        assert (mnt / name).read_bytes() == data
    # no whiteout marker survives into the rootfs
    markers = subprocess.run(["find", str(mnt), "-xdev", "-name", ".wh.*"], capture_output=True, text=True)
    assert markers.returncode == 0 and markers.stdout == ""



def test_rootfs_matches_podman(debian, imported):
    """Every path of kvmvm's rootfs against podman's own merged tree of the same image
    (type, mode, owner, content, link targets, xattrs, hard-link groups)."""
    _, mnt = imported
    name = f"localhost/kvmvm-test-debian-{os.getpid()}:{deb.TAG}"
    fx.sh("skopeo", "copy", "--quiet", debian.ref, f"containers-storage:{name}")
    try:
        pmnt = fx.podman("image", "mount", name).stdout.strip()
        try:
            theirs = fx.snapshot(Path(pmnt))
        finally:
            subprocess.run(["podman", "image", "unmount", name], capture_output=True)
    finally:
        subprocess.run(["podman", "rmi", "-f", name], capture_output=True)
    ours = fx.snapshot(mnt)
    assert len(ours) > 4000                     # a whole Debian system, not a stub
    assert sorted(ours) == sorted(theirs)
    assert [p for p in theirs if ours[p] != theirs[p]] == []


def test_debian_files_present_and_usable(imported):
    _, mnt = imported
    version = (mnt / "etc/debian_version").read_text().strip()
    assert version.split(".")[0] == "12", version
    assert os.access(mnt / "usr/bin/apt", os.X_OK) and os.access(mnt / "usr/bin/apt-get", os.X_OK)
    assert os.readlink(mnt / "bin") == "usr/bin"       # merged /usr
    assert (mnt / "dev").is_dir() and list((mnt / "dev").iterdir()) == []   # no device nodes
    assert (mnt / deb.RELEASE[0]).read_bytes() == deb.RELEASE[1]
    assert (mnt / deb.SCRIPT[0]).stat().st_mode & 0o777 == 0o755
    assert not (mnt / "usr/share/man").exists() or not any((mnt / "usr/share/man").iterdir())
    # the rootfs runs: Debian's own binaries, chrooted into the read-only mount
    r = subprocess.run(["chroot", str(mnt), "/usr/bin/apt-get", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("apt 2."), r.stderr
    r = subprocess.run(["chroot", str(mnt), "dpkg-query", "-W", "-f", "${Status}", "apt"],
                       capture_output=True, text=True, env={"PATH": deb.ENV[0][5:]})
    assert r.stdout == "install ok installed", r.stderr
    r = subprocess.run(["chroot", str(mnt), "/usr/local/bin/kvmvm-hello", "x"], capture_output=True, text=True)
    assert r.stdout == "hello from layer 3: x\n", r.stderr


def test_test_sh_finds_users_of_the_image(tmp_path):
    (tmp_path / "test_a.py").write_text("import os\n")
    assert not deb.used_by([str(tmp_path)])
    (tmp_path / "b_pending.py").write_text("from tests import debianimage\n")
    assert not deb.used_by([str(tmp_path)])             # a pending file is not collected
    assert deb.used_by([str(tmp_path / "b_pending.py") + "::test_x"])
    (tmp_path / "test_c.py").write_text("from tests import debianimage\n")
    assert deb.used_by([str(tmp_path)])


# ---- the cache's logic, with the slow build replaced (a private KVMVM_HOME) ------------

@pytest.fixture
def fake_build(monkeypatch, tmp_path):
    """get() with mmdebstrap + umoci replaced by a builder that counts its calls."""
    import threading
    import time

    monkeypatch.setenv("KVMVM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KVMHOST_INSIDE", raising=False)
    calls = []

    def build(tmp: Path) -> dict:
        calls.append(threading.get_ident())
        time.sleep(0.3)                      # long enough for a second caller to queue
        if os.environ.get("FAKE_BUILD_FAIL"):
            raise deb.DebianImageError("mirror unreachable")
        (tmp / "oci").mkdir()
        (tmp / "oci" / "index.json").write_text("{}")
        return {"built_at": str(len(calls)), "base_opaque_files": []}

    monkeypatch.setattr(deb, "_build", build)
    return calls


def test_concurrent_callers_build_once(fake_build):
    import threading

    got = []
    ts = [threading.Thread(target=lambda: got.append(deb.get())) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(fake_build) == 1 and len({g.dir for g in got}) == 1
    assert sorted(p.name for p in deb.cache_root().iterdir()) == [".debian.lock", got[0].dir.name]


def test_failed_build_leaves_nothing_and_old_inputs_are_dropped(fake_build, monkeypatch):
    old = deb.get()
    monkeypatch.setattr(deb, "BUILDER_VERSION", deb.BUILDER_VERSION + 1)
    monkeypatch.setenv("FAKE_BUILD_FAIL", "1")
    with pytest.raises(deb.DebianImageError, match="mirror unreachable"):
        deb.get()
    assert sorted(p.name for p in deb.cache_root().iterdir()) == [".debian.lock", old.dir.name]
    monkeypatch.delenv("FAKE_BUILD_FAIL")
    new = deb.get()
    assert new.dir != old.dir and not old.dir.exists()  # the older inputs' build is removed


def test_inside_l1_a_missing_image_is_an_error(fake_build, monkeypatch):
    monkeypatch.setenv("KVMHOST_INSIDE", "1")
    with pytest.raises(deb.DebianImageError, match="scripts/test.sh builds it on the host"):
        deb.get()
    assert fake_build == []


def test_missing_tool_names_its_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(deb.DebianImageError, match=r"mmdebstrap is not installed \(Debian package mmdebstrap"):
        deb._need("mmdebstrap")
