"""Container runtimes for the comparisons: crun, runc, podman, bwrap, unshare+chroot.

All of them run the same small rootfs built here: busybox-static copied into a
directory (/bin/busybox plus a few applet links). runc/crun get an OCI bundle
per command; podman gets the rootfs as an image through `podman import`.

Host quirks handled (Debian 12 hosts without systemd, cgroups v1): crun refuses cgroup v1
"hybrid" mode, so when /sys/fs/cgroup/unified is mounted it runs in a private
mount namespace with that mount removed (`unshare -m sh -c 'umount ... && exec
crun ...'`, which adds a few ms of its own); podman needs --ulimit flags and uses
runc (`--runtime runc`), since its default crun hits the same cgroup problem.
A runtime that is absent or fails to set up is returned as missing with the reason.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import time

BUSYBOX_CANDIDATES = ["/bin/busybox", "/usr/bin/busybox"]
APPLETS = ["sh", "true", "sleep", "uname", "cat", "ls", "ps", "id", "hostname"]
IMAGE = "localhost/kvmvm-bench-busybox:latest"
PODMAN_FLAGS = ["--runtime", "runc"]
PODMAN_RUN = ["--rm", "--network", "none", "--ulimit", "nofile=20000:20000",
              "--ulimit", "nproc=32768:32768"]
CGROUP2_HYBRID = "/sys/fs/cgroup/unified"
_ids = itertools.count(1)

RUNTIMES = ["crun", "runc", "podman", "bwrap", "unshare+chroot"]
INSTALL_HINT = {"crun": "apt-get install crun", "runc": "apt-get install runc",
                "podman": "apt-get install podman", "bwrap": "apt-get install bubblewrap",
                "unshare+chroot": "apt-get install util-linux coreutils"}
BINARIES = {"crun": ["crun", "unshare"], "runc": ["runc"], "podman": ["podman", "runc"],
            "bwrap": ["bwrap"], "unshare+chroot": ["unshare", "chroot"]}


def new_id() -> str:
    return f"kvmvm-bench-{os.getpid()}-{next(_ids)}"


def build_rootfs(work: str) -> str:
    """<work>/rootfs with a static busybox; returns its path. Raises RuntimeError."""
    bb = next((p for p in BUSYBOX_CANDIDATES if os.path.exists(p)), None)
    if bb is None:
        raise RuntimeError("no busybox for the container rootfs (apt-get install busybox-static)")
    out = subprocess.run(["file", "-L", bb], capture_output=True, text=True).stdout \
        if shutil.which("file") else "statically linked"
    if "dynamically" in out:
        raise RuntimeError(f"{bb} is dynamically linked (apt-get install busybox-static)")
    root = os.path.join(work, "rootfs")
    if os.path.exists(os.path.join(root, "bin", "busybox")):
        return root
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy2(bb, os.path.join(root, "bin", "busybox"))
    for a in APPLETS:
        link = os.path.join(root, "bin", a)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/:/bin/sh\n")
    return root


def _bundle(work: str, rootfs: str, args: list[str]) -> str:
    """An OCI bundle dir whose config runs `args` in `rootfs` (read-only, no terminal)."""
    import hashlib

    key = "\0".join(args)
    name = "bundle-" + "".join(c if c.isalnum() else "_" for c in key)[:40] + "-" + \
        hashlib.sha1(key.encode()).hexdigest()[:8]
    b = os.path.join(work, name)
    cfgp = os.path.join(b, "config.json")
    if os.path.exists(cfgp):
        return b
    os.makedirs(b, exist_ok=True)
    subprocess.run(["runc" if shutil.which("runc") else "crun", "spec"], cwd=b, check=True,
                   capture_output=True)
    with open(cfgp) as f:
        c = json.load(f)
    c["process"]["terminal"] = False
    c["process"]["args"] = args
    c["root"] = {"path": rootfs, "readonly": True}
    c["hostname"] = "container"
    with open(cfgp, "w") as f:
        json.dump(c, f)
    return b


class Runtime:
    """One runtime: `cmd(args)` is the command that runs `args` in a fresh container."""

    def __init__(self, name: str, work: str):
        self.name, self.work = name, work
        self.rootfs = None
        self.ids: list[str] = []

    def check(self) -> str | None:
        """None when usable, else why not."""
        for b in BINARIES[self.name]:
            if not shutil.which(b):
                return f"{b} not installed ({INSTALL_HINT[self.name]})"
        if os.geteuid() != 0 and self.name in ("crun", "runc", "unshare+chroot"):
            return "needs root here (rootless setup not configured)"
        return None

    def setup(self) -> None:
        self.rootfs = build_rootfs(self.work)
        if self.name == "podman":
            have = subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True)
            if have.returncode != 0:
                tar = os.path.join(self.work, "rootfs.tar")
                with tarfile.open(tar, "w") as t:
                    t.add(self.rootfs, arcname=".")
                p = subprocess.run(["podman", "import", tar, IMAGE], capture_output=True, text=True,
                                   timeout=120)
                if p.returncode != 0:
                    raise RuntimeError(f"podman import failed: {p.stderr.strip()[-200:]}")

    def cmd(self, args: list[str], detach: bool = False) -> list[str]:
        n = self.name
        if n in ("crun", "runc"):
            cid = new_id()
            self.ids.append(cid)
            b = _bundle(self.work, self.rootfs, args)
            base = [n, "run", "-b", b, cid]
            if n == "crun" and os.path.ismount(CGROUP2_HYBRID):
                return ["unshare", "-m", "sh", "-c",
                        f"umount {CGROUP2_HYBRID} && exec " + shlex.join(base)]
            return base
        if n == "podman":
            cid = new_id()
            self.ids.append(cid)
            run = PODMAN_RUN + (["-d"] if detach else [])
            return ["podman"] + PODMAN_FLAGS + ["run", "--name", cid] + run + [IMAGE] + args
        if n == "bwrap":
            return ["bwrap", "--ro-bind", self.rootfs, "/", "--proc", "/proc", "--dev", "/dev",
                    "--unshare-all", "--die-with-parent", "--hostname", "container"] + args
        if n == "unshare+chroot":
            return ["unshare", "-mpuin", "--fork", "--mount-proc=" + self.rootfs + "/proc",
                    "chroot", self.rootfs] + args
        raise ValueError(n)

    def cleanup(self) -> None:
        """Remove every container this object created (best effort, bounded)."""
        for cid in self.ids:
            try:
                if self.name == "podman":
                    subprocess.run(["podman"] + PODMAN_FLAGS + ["rm", "-f", "-t", "0", cid],
                                   capture_output=True, timeout=30)
                elif self.name == "runc":
                    subprocess.run(["runc", "delete", "-f", cid], capture_output=True, timeout=10)
                elif self.name == "crun":
                    c = ["crun", "delete", "-f", cid]
                    if os.path.ismount(CGROUP2_HYBRID):
                        c = ["unshare", "-m", "sh", "-c", f"umount {CGROUP2_HYBRID} && exec " + shlex.join(c)]
                    subprocess.run(c, capture_output=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.ids.clear()


def runtimes(work: str, names=None) -> dict:
    """name -> Runtime ready to use, or a missing(reason) dict."""
    from benchlib import missing

    out = {}
    for n in names or RUNTIMES:
        r = Runtime(n, work)
        why = r.check()
        if why is None:
            try:
                r.setup()
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                why = f"setup failed: {e}"
        out[n] = r if why is None else missing(why)
    return out


def wait_for(pred, timeout: float, step: float = 0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None
