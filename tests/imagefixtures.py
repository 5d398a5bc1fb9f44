"""Test container images built offline from busybox-static with real tools (umoci, skopeo,
podman), so the image store is tested against the formats those tools write.

`build_layered(dir)` makes a three-layer OCI image layout whose layers are tar files
written here (tarfile, PAX headers for xattrs): ownership, modes (setuid, sticky), a hard
link, symlinks, device nodes, a FIFO and an xattr in layer 1; a whiteout (deleted file)
and an opaque directory in layer 2; a replaced file in layer 3. umoci assembles the layout
and sets the config; skopeo turns it into a docker-archive and an OCI archive.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = "/bin/busybox"
NAME = "localhost/kvmvm-test"
TAG = "1"
ENV = ["PATH=/usr/local/bin:/usr/bin:/bin", "KVMVM_TEST=layers"]
CMD = ["/bin/sh", "-c", "echo hello"]
WORKDIR = "/data"
MTIME = 1_700_000_000

# what the merged filesystem holds (checked by the tests)
DELETED = "data/gone.txt"
OPAQUE_GONE = ("opq/a", "opq/sub/x")
OPAQUE_KEPT = "opq/c"


def sh(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw)


class _Tar:
    """A layer tarball written member by member (GNU format + PAX for xattrs)."""

    def __init__(self, path: Path):
        self.tf = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)

    def _info(self, name, type_, mode, uid=0, gid=0, **kw) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = type_, mode, uid, gid, MTIME
        ti.uname = ti.gname = ""
        for k, v in kw.items():
            setattr(ti, k, v)
        return ti

    def dir(self, name, mode=0o755, uid=0, gid=0):
        self.tf.addfile(self._info(name, tarfile.DIRTYPE, mode, uid, gid))

    def file(self, name, data: bytes, mode=0o644, uid=0, gid=0, xattrs=None):
        ti = self._info(name, tarfile.REGTYPE, mode, uid, gid, size=len(data))
        if xattrs:
            ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
        self.tf.addfile(ti, io.BytesIO(data))

    def symlink(self, name, target):
        self.tf.addfile(self._info(name, tarfile.SYMTYPE, 0o777, linkname=target))

    def hardlink(self, name, target):
        self.tf.addfile(self._info(name, tarfile.LNKTYPE, 0o644, linkname=target))

    def chr(self, name, major, minor, mode=0o666):
        self.tf.addfile(self._info(name, tarfile.CHRTYPE, mode, devmajor=major, devminor=minor))

    def blk(self, name, major, minor, mode=0o660):
        self.tf.addfile(self._info(name, tarfile.BLKTYPE, mode, gid=6, devmajor=major, devminor=minor))

    def fifo(self, name, mode=0o644):
        self.tf.addfile(self._info(name, tarfile.FIFOTYPE, mode))

    def close(self):
        self.tf.close()


def _layer1(path: Path) -> None:
    t = _Tar(path)
    t.dir("bin")
    t.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    for app in ("sh", "ls", "cat", "echo", "id", "stat", "true", "sleep"):
        t.symlink(f"bin/{app}", "busybox")
    t.dir("etc")
    t.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
    t.file("etc/group", b"root:x:0:\ndisk:x:6:\napp:x:1000:\n")
    t.dir("home")
    t.dir("home/app", 0o750, 1000, 1000)
    t.file("home/app/secret", b"s3cret\n", 0o600, 1000, 1000)
    t.dir("usr")
    t.dir("usr/bin")
    t.file("usr/bin/setuid-tool", b"#!/bin/sh\nid\n", 0o4755)
    t.dir("tmp", 0o1777)
    t.dir("dev")
    t.chr("dev/kvmvm-null", 1, 3)
    t.blk("dev/kvmvm-loop", 7, 0)
    t.dir("run")
    t.fifo("run/fifo")
    t.dir("data")
    t.file("data/keep.txt", b"kept\n")
    t.hardlink("data/keep-hard.txt", "data/keep.txt")
    t.file("data/gone.txt", b"deleted in layer 2\n")
    t.file("data/xattr.txt", b"has an xattr\n", xattrs={"user.kvmvm": "hello"})
    t.symlink("data/abs-link", "/etc/passwd")
    t.dir("opq")
    t.file("opq/a", b"a\n")
    t.dir("opq/sub")
    t.file("opq/sub/x", b"x\n")
    t.file("etc/motd", b"layer 1\n")
    t.close()


def _layer2(path: Path) -> None:
    t = _Tar(path)
    t.dir("data")
    t.file("data/.wh.gone.txt", b"")
    t.dir("opq")
    t.file("opq/.wh..wh..opq", b"")
    t.file("opq/c", b"c from layer 2\n", 0o640, 1000, 1000)
    t.close()


def _layer3(path: Path) -> None:
    t = _Tar(path)
    t.dir("etc")
    t.file("etc/motd", b"layer 3\n")
    t.file("etc/hostname", b"kvmvm-test\n")
    t.close()


def build_layered(work: Path) -> Path:
    """An OCI image layout at work/oci with the tag TAG; returns its path."""
    work.mkdir(parents=True, exist_ok=True)
    layout = work / "oci"
    sh("umoci", "init", "--layout", layout)
    sh("umoci", "new", "--image", f"{layout}:{TAG}")
    for i, make in enumerate((_layer1, _layer2, _layer3), 1):
        tar = work / f"layer{i}.tar"
        make(tar)
        sh("umoci", "raw", "add-layer", "--image", f"{layout}:{TAG}",
           "--history.created_by", f"kvmvm test layer {i}", tar)
        tar.unlink()
    args = [x for c in CMD for x in ("--config.cmd", c)]
    env = [x for e in ENV for x in ("--config.env", e)]
    sh("umoci", "config", "--image", f"{layout}:{TAG}", "--config.workingdir", WORKDIR,
       "--config.label", "org.kvmvm.test=1", *env, *args)
    return layout


def to_docker_archive(layout: Path, out: Path, name: str = f"{NAME}:{TAG}") -> Path:
    sh("skopeo", "copy", "--quiet", f"oci:{layout}:{TAG}", f"docker-archive:{out}:{name}")
    return out


def to_oci_archive(layout: Path, out: Path, name: str = f"{NAME}:{TAG}") -> Path:
    sh("skopeo", "copy", "--quiet", f"oci:{layout}:{TAG}", f"oci-archive:{out}:{name}")
    return out


def manifest_of(layout: Path, tag: str = TAG) -> dict:
    idx = json.loads((layout / "index.json").read_text())
    for m in idx["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            algo, hexd = m["digest"].split(":")
            return json.loads((layout / "blobs" / algo / hexd).read_bytes())
    raise KeyError(tag)


def blob_path(layout: Path, digest: str) -> Path:
    algo, hexd = digest.split(":")
    return layout / "blobs" / algo / hexd


def podman_available() -> bool:
    return shutil.which("podman") is not None


def podman(*args, **kw) -> subprocess.CompletedProcess:
    return sh("podman", *args, **kw)


def snapshot(root: Path, skip_root: bool = True) -> dict:
    """Everything about a tree that an image must preserve, keyed by relative path:
    type, mode, owner, size, content hash, link target, device numbers, user./security.
    xattrs, mtime, and a hard-link group (the first path sharing the inode)."""
    import hashlib
    import stat as st

    out, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            s = os.lstat(p)
            kind = st.S_IFMT(s.st_mode)
            entry = {"mode": oct(s.st_mode), "uid": s.st_uid, "gid": s.st_gid}
            if kind == st.S_IFREG:
                entry["sha"] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
                entry["mtime"] = int(s.st_mtime)
                key = (s.st_dev, s.st_ino)
                entry["link_group"] = inodes.setdefault(key, rel) if s.st_nlink > 1 else None
            elif kind == st.S_IFLNK:
                entry["target"] = os.readlink(p)
            elif kind in (st.S_IFCHR, st.S_IFBLK):
                entry["rdev"] = (os.major(s.st_rdev), os.minor(s.st_rdev))
            if kind != st.S_IFLNK:
                try:
                    names = sorted(x for x in os.listxattr(p, follow_symlinks=False)
                                   if x.startswith(("user.", "security.")))
                except OSError:
                    names = []
                entry["xattrs"] = {x: os.getxattr(p, x, follow_symlinks=False) for x in names}
            out[rel] = entry
    return out


class mounted:
    """A filesystem image mounted read-only on a temporary directory (root only)."""

    def __init__(self, image: Path, fstype: str):
        import tempfile

        self.image, self.fstype = image, fstype
        self.dir = Path(tempfile.mkdtemp(prefix="kvmvm-test-mnt-"))

    def __enter__(self) -> Path:
        sh("mount", "-t", self.fstype, "-o", "ro,loop", self.image, self.dir)
        return self.dir

    def __exit__(self, *exc):
        subprocess.run(["umount", str(self.dir)], check=False)
        self.dir.rmdir()
