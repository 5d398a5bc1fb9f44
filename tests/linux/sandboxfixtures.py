"""The linux-tier sandbox tests' shared fixtures (session-scoped: the sandbox test files of
one L1 boot share one image and one warm snapshot).

One busybox image (every applet linked) is imported into a private store; warm snapshots
go to a private directory; run directories to a private XDG_RUNTIME_DIR.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmvm.images.store import ImageStore
from kvmvm.sandbox import Sandbox
from tests.imagefixtures import BUSYBOX, TAG, _Tar, sh

# every guest process's command line, one a line (the image's busybox has no pgrep)
PROCS = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"

def _build_busybox(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    layout = work / "oci"
    sh("umoci", "init", "--layout", layout)
    sh("umoci", "new", "--image", f"{layout}:{TAG}")
    tar = work / "layer.tar"
    t = _Tar(tar)
    for d in ("bin", "etc", "tmp", "root", "home", "home/app"):
        t.dir(d, 0o1777 if d == "tmp" else 0o755, *((1000, 1000) if d == "home/app" else (0, 0)))
    t.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    for app in sh(BUSYBOX, "--list").stdout.split():
        if app != "busybox":
            t.symlink(f"bin/{app}", "busybox")
    t.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
    t.file("etc/group", b"root:x:0:\napp:x:1000:\n")
    t.close()
    sh("umoci", "raw", "add-layer", "--image", f"{layout}:{TAG}", tar)
    sh("umoci", "config", "--image", f"{layout}:{TAG}", "--config.env", "PATH=/bin", "--config.env", "IMG=bb",
       "--config.workingdir", "/root")
    return layout


@pytest.fixture(scope="session")
def image(tmp_path_factory):
    work = tmp_path_factory.mktemp("sandbox-image")
    store = ImageStore(root=work / "store", rootfs_type="ext4")   # ext4: any kvmvm guest kernel mounts it
    (img,) = store.import_(f"oci:{_build_busybox(work / 'build')}:{TAG}", name="kvmvm-sandbox-test:1")
    return img


@pytest.fixture(scope="session", autouse=True)
def private_snapshots(tmp_path_factory):
    from kvmvm.sandbox import vm as svm

    root = tmp_path_factory.mktemp("sandbox-snapshots")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(svm, "snapshot_root", lambda home=None: root)
        # run directories hold Unix sockets: a local directory (KVMVM_HOME may be a 9p share)
        mp.setenv("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("xdg-runtime")))
        yield root


@pytest.fixture(scope="session")
def warm(image, private_snapshots):
    """The first sandbox boots cold and leaves the warm snapshot; it is checked, then killed."""
    sb = Sandbox.create(image, memory_mib=256, timeout=600)
    try:
        assert not sb.warm
        assert [d for d in private_snapshots.iterdir() if (d / "template.json").is_file()]
        assert sb.commands.run("hostname").stdout.strip() == sb.sandbox_id
        assert sb.commands.run("echo $IMG; pwd").stdout == "bb\n/root\n"
    finally:
        sb.kill()
    return image
