"""The container image store with the real tools: skopeo, umoci, mkfs.erofs/ext4, podman.

Images are built offline here (tests/imagefixtures.py): three layers from busybox-static
with owners, modes, a hard link, symlinks, device nodes, a FIFO, an xattr, a deleted file
and an opaque directory. The root filesystem kvmvm builds is mounted and compared, file by
file, with podman's own result for the same image (`podman image mount`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from tests import imagefixtures as fx

from kvmvm.errors import ConfigError
from kvmvm.images import ImageImportError, ImageInUse, ImageNotFound, ImageStore

ROOT = Path(__file__).resolve().parents[2]
KVMVM = [str(ROOT / ".venv" / "bin" / "kvmvm")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The layered test image as an OCI layout, an OCI archive and a docker-archive."""
    work = tmp_path_factory.mktemp("images")
    layout = fx.build_layered(work)
    return {
        "layout": layout,
        "oci_archive": fx.to_oci_archive(layout, work / "oci.tar"),
        "docker_archive": fx.to_docker_archive(layout, work / "docker.tar"),
        "manifest": fx.manifest_of(layout),
        "work": work,
    }


@pytest.fixture
def store(tmp_path):
    return ImageStore(tmp_path / "images")


def _leftovers(store: ImageStore) -> list:
    """Anything an import could have left behind in the store's tmp/."""
    return sorted(p.name for p in store.tmp.iterdir()) if store.tmp.exists() else []


# ---- importing every kind of source --------------------------------------------------

@pytest.mark.parametrize("kind", ["layout", "oci_archive", "docker_archive"])
def test_import_each_source_kind(built, store, kind):
    # the layout's only ref is the bare tag "1": it names no image, so --name does
    (img,) = store.import_(str(built[kind]), name="kvmvm-test:1" if kind == "layout" else None)
    assert img.names == ["kvmvm-test:1"]
    assert img.config["Cmd"] == fx.CMD
    assert img.config["Env"] == fx.ENV
    assert img.config["WorkingDir"] == fx.WORKDIR
    assert img.rootfs_type == "erofs" and img.rootfs.is_file()
    assert img.rootfs.stat().st_mode & 0o222 == 0          # read-only on the host too
    assert len(img.layers) == 3
    if kind != "docker_archive":     # a docker-archive's config is rewritten by skopeo
        assert img.digest == built["manifest"]["config"]["digest"]
    # resolvable by every form of its name and digest
    for ref in ("kvmvm-test:1", "localhost/kvmvm-test:1", img.digest, img.id, img.id[:12], img.manifest_digest):
        assert store.resolve(ref).digest == img.digest
    assert _leftovers(store) == []


def test_import_is_idempotent_and_shares_blobs(built, store):
    (a,) = store.import_(str(built["layout"]))
    assert a.names == []
    before = sorted(p.name for p in store.blobs.iterdir())
    (b,) = store.import_(str(built["oci_archive"]))
    assert a.digest == b.digest and b.names == ["kvmvm-test:1"]
    assert sorted(p.name for p in store.blobs.iterdir()) == before
    assert [p.name for p in store.ids.iterdir()] == [a.id]


def test_name_option_and_nameless_layout(built, store, tmp_path):
    # a layout whose only ref is a bare tag has no name unless one is given
    (img,) = store.import_(str(built["layout"]), name="other/app:7")
    assert img.names == ["other/app:7"]
    assert store.resolve("other/app:7").digest == img.digest
    with pytest.raises(ImageNotFound):
        store.resolve("other/app")          # :latest is another name


def test_podman_sources(built, store, tmp_path):
    """podman:NAME for an image in local podman storage, and a `podman import` image."""
    name = f"localhost/kvmvm-test-store-{os.getpid()}"
    rootfs_tar = tmp_path / "bb.tar"
    with tarfile.open(rootfs_tar, "w") as tf:
        tf.add(fx.BUSYBOX, "bin/busybox")
    try:
        fx.sh("skopeo", "copy", "--quiet", f"oci:{built['layout']}:{fx.TAG}", f"containers-storage:{name}:1")
        (img,) = store.import_(f"podman:{name}:1")
        assert img.names == [f"kvmvm-test-store-{os.getpid()}:1"]
        pid = fx.podman("image", "inspect", "--format", "{{.Id}}", f"{name}:1").stdout.strip()
        assert img.digest == "sha256:" + pid            # podman's image ID is our digest
        fx.podman("import", "-q", "--change", "CMD [\"/bin/busybox\", \"true\"]", rootfs_tar, f"{name}-imported:2")
        (imp,) = store.import_(f"podman:{name}-imported:2")
        assert imp.config["Cmd"] == ["/bin/busybox", "true"]
        assert len(imp.layers) == 1
    finally:
        subprocess.run(["podman", "rmi", "-f", f"{name}:1", f"{name}-imported:2"], capture_output=True)


def test_multi_image_archive(built, store, tmp_path):
    """podman save -m: one docker-archive with two images imports both, each with its name."""
    a, b = (f"localhost/kvmvm-test-multi-{os.getpid()}-{x}:1" for x in "ab")
    tar = tmp_path / "busybox.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(fx.BUSYBOX, "bin/busybox")
    try:
        fx.sh("skopeo", "copy", "--quiet", f"oci:{built['layout']}:{fx.TAG}", f"containers-storage:{a}")
        fx.podman("import", "-q", tar, b)
        fx.podman("save", "-q", "-m", "--format", "docker-archive", "-o", tmp_path / "multi.tar", a, b)
        imgs = store.import_(str(tmp_path / "multi.tar"))
    finally:
        subprocess.run(["podman", "rmi", "-f", a, b], capture_output=True)
    assert sorted(n for i in imgs for n in i.names) == sorted(x.split("/", 1)[1] for x in (a, b))
    assert len({i.digest for i in imgs}) == 2
    assert all(i.rootfs.is_file() for i in imgs)


def test_podman_source_missing_image(store):
    with pytest.raises(ImageImportError, match="podman save kvmvm-no-such-image"):
        store.import_("podman:kvmvm-no-such-image:0")
    assert _leftovers(store) == []


def test_registry_unreachable_is_one_line(store):
    with pytest.raises(ImageImportError) as e:
        store.import_("docker://registry.invalid/kvmvm/none:1")
    msg = str(e.value)
    assert "\n" not in msg and "registry" in msg
    assert _leftovers(store) == []


# ---- the root filesystem against podman's --------------------------------------------

@pytest.fixture(scope="module")
def podman_tree(built):
    """podman's merged tree of the same image: a snapshot taken while it is mounted."""
    name = f"localhost/kvmvm-test-tree-{os.getpid()}:1"
    fx.sh("skopeo", "copy", "--quiet", f"oci:{built['layout']}:{fx.TAG}", f"containers-storage:{name}")
    try:
        mnt = fx.podman("image", "mount", name).stdout.strip()
        try:
            yield fx.snapshot(Path(mnt))
        finally:
            subprocess.run(["podman", "image", "unmount", name], capture_output=True)
    finally:
        subprocess.run(["podman", "rmi", "-f", name], capture_output=True)


@pytest.mark.parametrize("fstype,kind", [("erofs", "layout"), ("ext4", "layout"), ("erofs", "docker_archive")])
def test_rootfs_matches_podman(built, podman_tree, tmp_path, fstype, kind):
    # a docker-archive's layers arrive uncompressed (under skopeo's "+gzip" media types)
    store = ImageStore(tmp_path / "images", rootfs_type=fstype)
    (img,) = store.import_(str(built[kind]))
    assert img.rootfs.name == f"rootfs.{fstype}"
    with fx.mounted(img.rootfs, fstype) as mnt:
        ours = fx.snapshot(mnt)
    ours.pop("lost+found", None)                   # ext4's own directory
    assert sorted(ours) == sorted(podman_tree)
    for path in podman_tree:
        assert ours[path] == podman_tree[path], path
    # and what the layers say, independently of podman
    assert fx.DELETED not in ours
    for p in fx.OPAQUE_GONE:
        assert p not in ours
    assert fx.OPAQUE_KEPT in ours and ours[fx.OPAQUE_KEPT]["uid"] == 1000
    assert ours["data/keep-hard.txt"]["link_group"] == ours["data/keep.txt"]["link_group"] is not None
    assert ours["dev/kvmvm-null"]["rdev"] == (1, 3) and ours["dev/kvmvm-loop"]["rdev"] == (7, 0)
    assert ours["data/xattr.txt"]["xattrs"] == {"user.kvmvm": b"hello"}
    assert ours["usr/bin/setuid-tool"]["mode"] == oct(0o104755)
    assert ours["tmp"]["mode"] == oct(0o41777)
    assert ours["home/app/secret"]["uid"] == 1000 and ours["home/app/secret"]["mode"] == oct(0o100600)
    assert ours["bin/sh"]["target"] == "busybox"
    assert ours["etc/motd"]["sha"] == __import__("hashlib").sha256(b"layer 3\n").hexdigest()


def test_rootfs_rebuilt_when_missing(built, store):
    (img,) = store.import_(str(built["layout"]))
    with fx.mounted(img.rootfs, "erofs") as mnt:
        first = fx.snapshot(mnt)
    os.chmod(img.rootfs, 0o644)
    img.rootfs.unlink()
    with fx.mounted(img.rootfs, "erofs") as mnt:    # rebuilt from the stored blobs
        assert fx.snapshot(mnt) == first
    other = ImageStore(store.root, rootfs_type="ext4").resolve(img.digest)
    assert other.rootfs.name == "rootfs.ext4" and other.rootfs.is_file()


# ---- refusing bad input, keeping nothing --------------------------------------------

def _assert_empty(store: ImageStore) -> None:
    assert _leftovers(store) == []
    assert not store.ids.exists() or list(store.ids.iterdir()) == []
    assert not store.blobs.exists() or list(store.blobs.iterdir()) == []


def test_corrupt_layer_in_layout_refused(built, store, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(built["layout"], bad)
    blob = fx.blob_path(bad, built["manifest"]["layers"][0]["digest"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(ImageImportError) as e:
        store.import_(str(bad))
    assert "\n" not in str(e.value)
    assert "digest" in str(e.value) or "corrupt" in str(e.value)
    _assert_empty(store)


def test_corrupt_layer_in_docker_archive_refused(built, store, tmp_path):
    """A docker-archive has no layer digests in its manifest: the config's diff_ids catch it."""
    bad = tmp_path / "bad.tar"
    shutil.copy(built["docker_archive"], bad)
    with tarfile.open(bad) as tf:
        big = max((m for m in tf if m.isfile()), key=lambda m: m.size)
        offset = big.offset_data + big.size // 2
    with open(bad, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ImageImportError) as e:
        store.import_(str(bad))
    assert "diff_id" in str(e.value) or "digest" in str(e.value), str(e.value)
    _assert_empty(store)


@pytest.mark.parametrize("kind", ["docker_archive", "oci_archive"])
def test_truncated_archive_refused(built, store, tmp_path, kind):
    bad = tmp_path / "cut.tar"
    data = built[kind].read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageImportError) as e:
        store.import_(str(bad))
    assert "\n" not in str(e.value)
    _assert_empty(store)


def test_not_an_image(store, tmp_path):
    junk = tmp_path / "junk.tar"
    with tarfile.open(junk, "w") as tf:
        tf.add(fx.BUSYBOX, "busybox")
    with pytest.raises(ImageImportError, match="neither a docker-archive"):
        store.import_(str(junk))
    (tmp_path / "plain").write_text("hello")
    with pytest.raises(ImageImportError, match="not a readable tar"):
        store.import_(str(tmp_path / "plain"))
    with pytest.raises(ConfigError, match="no such file"):
        store.import_(str(tmp_path / "missing.tar"))
    with pytest.raises(ConfigError, match="not an OCI image layout"):
        store.import_(str(tmp_path))
    _assert_empty(store)


# ---- concurrency --------------------------------------------------------------------

def test_concurrent_imports_of_one_image(built, tmp_path):
    """Two processes import the same image at once: both succeed, one image, one rootfs."""
    home = tmp_path / "home"
    env = dict(os.environ, KVMVM_HOME=str(home))
    procs = [subprocess.Popen([*KVMVM, "image", "import", "--quiet", str(built[k])], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in ("layout", "oci_archive")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    digests = {o[0].split()[1] for o in outs}
    assert len(digests) == 1
    store = ImageStore(home / "images")
    assert len(store.list()) == 1
    img = store.list()[0]
    with fx.mounted(img.rootfs, "erofs") as mnt:
        assert (mnt / "bin" / "busybox").is_file()
    assert _leftovers(store) == []


def test_import_while_listing(built, store):
    """Readers never see a half-published image."""
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            for i in store.list():
                seen.append((i.digest, (i.dir / "meta.json").is_file(), i.rootfs.exists()))

    t = threading.Thread(target=reader)
    t.start()
    try:
        store.import_(str(built["layout"]))
    finally:
        stop.set()
        t.join()
    assert all(ok and rootfs for _, ok, rootfs in seen)


# ---- removal ------------------------------------------------------------------------

def test_rm_untag_delete_and_in_use(built, store):
    (img,) = store.import_(str(built["oci_archive"]))
    store.import_(str(built["layout"]), name="second:1")
    assert store.resolve("second:1").names == ["kvmvm-test:1", "second:1"]
    assert store.remove("second:1") == ["Untagged: second:1"]
    with store.resolve("kvmvm-test:1").use():
        with pytest.raises(ImageInUse):
            store.remove("kvmvm-test:1")
        assert store.resolve("kvmvm-test:1").rootfs.exists()
    lines = store.remove("kvmvm-test:1")
    assert lines == ["Untagged: kvmvm-test:1", f"Deleted: {img.digest}"]
    with pytest.raises(ImageNotFound):
        store.resolve(img.digest)
    assert list(store.blobs.iterdir()) == []       # no image refers to them any more
    with pytest.raises(ImageNotFound):
        store.remove("kvmvm-test:1")


def test_rm_by_digest_with_several_names_needs_force(built, store):
    (img,) = store.import_(str(built["oci_archive"]))
    store.import_(str(built["layout"]), name="second:1")
    with pytest.raises(ConfigError, match="several|names"):
        store.remove(img.id[:12])
    assert store.remove(img.id[:12], force=True)[-1] == f"Deleted: {img.digest}"
    assert store.list() == []


def test_prune_dangling_and_interrupted(built, store):
    (old,) = store.import_(str(built["docker_archive"]))      # kvmvm-test:1, then the name moves
    (new,) = store.import_(str(built["oci_archive"]))
    assert old.digest != new.digest
    assert store.resolve(old.digest).names == []
    # an import killed half-way: its tmp/ entry, whose .owner lock nobody holds
    code = ("import sys, os; from kvmvm.images import ImageStore; s = ImageStore(sys.argv[1]);"
            "cm = s._staging(); w = cm.__enter__(); (w / 'half').write_bytes(b'x' * 4096); os._exit(9)")
    subprocess.run([sys.executable, "-c", code, str(store.root)], check=False)
    assert len(_leftovers(store)) == 1
    with store.resolve(old.digest).use():          # a VM still runs the unnamed image
        held = store.prune()
    assert held.images == [] and store.resolve(old.digest).rootfs.exists()
    assert _leftovers(store) == []
    subprocess.run([sys.executable, "-c", code, str(store.root)], check=False)      # another one
    res = store.prune()
    assert res.images == [old.digest]
    assert res.blobs > 0 and res.bytes > 0
    assert _leftovers(store) == []
    assert [i.digest for i in store.list()] == [new.digest]
    assert store.resolve("kvmvm-test:1").rootfs.exists()
