"""Container runtimes for the comparisons: crun, runc, podman, bwrap, unshare+chroot.

All of them run the same small rootfs built here: busybox-static copied into a
directory (/bin/busybox plus a few applet links). runc/crun get an OCI bundle
per command; podman gets the rootfs as an image through `podman import`.

Host quirks are handled only where they are detected, so an ordinary podman+crun host runs
everything as installed: crun refuses cgroup v1 "hybrid" mode, so when
/sys/fs/cgroup/unified is mounted it runs in a private mount namespace with that mount
removed (`unshare -m sh -c 'umount ... && exec crun ...'`, which adds a few ms of its own).
podman is first tried as installed; only if `podman run ... true` fails are the known
workarounds tried in turn (`--runtime runc` for the same cgroup problem, raised
`--ulimit`s for hosts whose limits podman's OCI runtime refuses), and the ones needed are
reported as the runtime's `quirks`. A runtime that is absent or fails to set up is returned
as missing with the reason.

podman's default storage on a read-only root (the kvmvm test host mounts the host's root
read-only) cannot even open its database: only then does podman get a private, writable
`--root`/`--runroot` under the benchmark's work directory, and the image is imported (or
pulled from the same OCI layout kvmvm imports) into it; the quirk is reported as "private
storage". crun/runc need a cgroup file system at /sys/fs/cgroup: without one they are
reported missing with that reason.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
import tomllib

BUSYBOX_CANDIDATES = ["/bin/busybox", "/usr/bin/busybox"]
APPLETS = ["sh", "true", "sleep", "uname", "cat", "ls", "ps", "id", "hostname"]
IMAGE = "localhost/kvmvm-bench-busybox:latest"
PODMAN_RUN = ["--rm", "--network", "none"]
# workarounds tried, in this order, only when podman as installed cannot run `true`
PODMAN_QUIRKS = [
    ("runtime runc (crun refuses cgroup v1 hybrid)", ["--runtime", "runc"], []),
    ("raised ulimits", [], ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]),
    ("runtime runc + raised ulimits", ["--runtime", "runc"],
     ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]),
    ("no systemd: cgroupfs manager, file events", ["--cgroup-manager", "cgroupfs", "--events-backend", "file"], []),
]
CGROUP2_HYBRID = "/sys/fs/cgroup/unified"
CGROUP_ROOT = "/sys/fs/cgroup"
# containers/storage reads the first of these that exists (CONTAINERS_STORAGE_CONF first)
STORAGE_CONFS = ["/etc/containers/storage.conf", "/usr/share/containers/storage.conf"]
PRIVATE_STORAGE = "private storage (default storage not writable)"
RUNROOT_MAX = 50        # podman refuses a longer --runroot (sockets live below it)
_ids = itertools.count(1)

RUNTIMES = ["crun", "runc", "podman", "bwrap", "unshare+chroot"]
INSTALL_HINT = {"crun": "apt-get install crun", "runc": "apt-get install runc",
                "podman": "apt-get install podman", "bwrap": "apt-get install bubblewrap",
                "unshare+chroot": "apt-get install util-linux coreutils"}
BINARIES = {"crun": ["crun", "unshare"], "runc": ["runc"], "podman": ["podman"],
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


def podman_default_storage(euid: int | None = None, env=None, confs=None) -> tuple[str, str]:
    """(graphroot, runroot) podman uses without flags, as containers/storage resolves them."""
    euid = os.geteuid() if euid is None else euid
    env = os.environ if env is None else env
    confs = ([env["CONTAINERS_STORAGE_CONF"]] if env.get("CONTAINERS_STORAGE_CONF") else []) + \
        (STORAGE_CONFS if confs is None else confs)
    cfg: dict = {}
    for c in confs:
        try:
            with open(c, "rb") as f:
                cfg = tomllib.load(f).get("storage", {})
            break
        except FileNotFoundError:
            continue
        except (OSError, tomllib.TOMLDecodeError):
            break          # podman fails on it too; the run will say why
    if euid == 0:
        return (cfg.get("graphroot") or "/var/lib/containers/storage",
                cfg.get("runroot") or "/run/containers/storage")
    home = env.get("HOME") or os.path.expanduser("~")
    data = env.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    run = env.get("XDG_RUNTIME_DIR") or f"/run/user/{euid}"
    return (cfg.get("rootless_storage_path") or os.path.join(data, "containers", "storage"),
            os.path.join(run, "containers"))


def writable(path: str) -> bool:
    """Could `path` be created or written: its nearest existing ancestor is a writable
    directory on a file system that is not mounted read-only."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            return False
        p = parent
    if not os.path.isdir(p):
        return False
    try:
        if os.statvfs(p).f_flag & os.ST_RDONLY:
            return False
    except OSError:
        return False
    return os.access(p, os.W_OK)


def podman_storage_flags(work: str, storage=None, is_writable=writable) -> list[str]:
    """[] when podman's default storage is writable; else a private --root/--runroot in work."""
    graph, run = storage or podman_default_storage()
    if is_writable(graph) and is_writable(run):
        return []
    base = os.path.join(work, "podman")
    runroot = os.path.join(base, "runroot")
    if len(runroot) > RUNROOT_MAX:
        runroot = tempfile.mkdtemp(prefix="kvmvm-podrun-", dir="/tmp")
    flags = ["--root", os.path.join(base, "root"), "--runroot", runroot]
    if not overlay_available():     # a kernel without overlay: the driver that needs nothing
        flags += ["--storage-driver", "vfs"]
    return flags


def overlay_available(filesystems: str = "/proc/filesystems") -> bool:
    try:
        with open(filesystems) as f:
            return any(line.split()[-1:] == ["overlay"] for line in f)
    except OSError:
        return False


def cgroup_problem(root: str = CGROUP_ROOT) -> str | None:
    """None when a cgroup file system is mounted at `root` (what crun/runc need), else why not."""
    try:
        entries = os.listdir(root)
    except OSError as e:
        return f"no cgroup file system at {root} ({e.strerror})"
    if "cgroup.controllers" in entries or "cgroup.procs" in entries or any(
            os.path.ismount(os.path.join(root, e)) for e in entries):
        return None
    return f"no cgroup file system mounted at {root} (mount -t cgroup2 cgroup2 {root})"


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

    def __init__(self, name: str, work: str, source: str | None = None):
        """`source`: for podman, an image reference to pull (e.g. oci:LAYOUT:TAG) instead of
        importing the busybox rootfs."""
        self.name, self.work, self.source = name, work, source
        self.rootfs = None
        self.image = IMAGE
        self.ids: list[str] = []
        self.podman_flags: list[str] = []    # global flags (--root, --runtime), quirks only
        self.podman_run: list[str] = list(PODMAN_RUN)
        self.quirks: list[str] = []

    def check(self) -> str | None:
        """None when usable, else why not."""
        for b in BINARIES[self.name]:
            if not shutil.which(b):
                return f"{b} not installed ({INSTALL_HINT[self.name]})"
        if os.geteuid() != 0 and self.name in ("crun", "runc", "unshare+chroot"):
            return "needs root here (rootless setup not configured)"
        if self.name in ("crun", "runc"):
            return cgroup_problem()
        return None

    def setup(self) -> None:
        self.rootfs = build_rootfs(self.work)
        if self.name == "podman":
            self.podman_flags = podman_storage_flags(self.work)
            if self.podman_flags:
                self.quirks.append(PRIVATE_STORAGE)
            if self.source:
                p = self._podman(["pull", "-q", self.source], timeout=300)
                if p.returncode != 0:
                    raise RuntimeError(f"podman pull {self.source} failed: {p.stderr.strip()[-200:]}")
                self.image = p.stdout.split()[-1]
            elif self._podman(["image", "exists", IMAGE]).returncode != 0:
                tar = os.path.join(self.work, "rootfs.tar")
                with tarfile.open(tar, "w") as t:
                    t.add(self.rootfs, arcname=".")
                p = self._podman(["import", tar, IMAGE])
                if p.returncode != 0:
                    raise RuntimeError(f"podman import failed: {p.stderr.strip()[-200:]}")
            self._detect_podman_quirks()

    def _podman(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", *self.podman_flags, *args], capture_output=True, text=True,
                              timeout=timeout)

    def _detect_podman_quirks(self) -> None:
        """podman as installed first; the known workarounds only if that cannot run `true`."""
        def works(flags, run) -> str | None:
            p = self._podman([*flags, "run", *PODMAN_RUN, *run, self.image, "/bin/true"])
            return None if p.returncode == 0 else (p.stderr.strip().splitlines() or ["?"])[-1][-200:]

        first = works([], [])
        if first is None:
            return
        for name, flags, run in PODMAN_QUIRKS:
            if works(flags, run) is None:
                self.podman_flags = self.podman_flags + flags
                self.podman_run = PODMAN_RUN + run
                self.quirks.append(name)
                return
        raise RuntimeError(f"podman run fails here, also with the known workarounds: {first}")

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
            run = self.podman_run + (["-d"] if detach else [])
            return ["podman"] + self.podman_flags + ["run", "--name", cid] + run + [self.image] + args
        if n == "bwrap":
            return ["bwrap", "--ro-bind", self.rootfs, "/", "--proc", "/proc", "--dev", "/dev",
                    "--unshare-all", "--die-with-parent", "--hostname", "container"] + args
        if n == "unshare+chroot":
            return ["unshare", "-mpuin", "--fork", "--mount-proc=" + self.rootfs + "/proc",
                    "chroot", self.rootfs] + args
        raise ValueError(n)

    def exec_cmd(self, cid: str, args: list[str]) -> list[str]:
        """podman only: the command that runs `args` in the running container `cid`."""
        return ["podman"] + self.podman_flags + ["exec", cid] + args

    def cleanup(self) -> None:
        """Remove every container this object created, and a private podman storage with
        everything in it (best effort, bounded)."""
        self._cleanup_containers()
        if self.name == "podman" and PRIVATE_STORAGE in self.quirks:
            f = self.podman_flags
            dirs = [os.path.join(self.work, "podman"), f[f.index("--runroot") + 1]]
            try:
                self._podman(["rmi", "-a", "-f"], timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                pass
            # overlay keeps its home (and any leftover layer) mounted: unmount, deepest first
            with open("/proc/self/mounts") as fm:
                mnts = [ln.split()[1] for ln in fm if any(ln.split()[1].startswith(d + "/") for d in dirs)]
            for m in sorted(mnts, key=len, reverse=True):
                subprocess.run(["umount", "-l", m], capture_output=True, timeout=10)
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)

    def _cleanup_containers(self) -> None:
        for cid in self.ids:
            try:
                if self.name == "podman":
                    subprocess.run(["podman"] + self.podman_flags + ["rm", "-f", "-t", "0", cid],
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


def runtimes(work: str, names=None, podman_source: str | None = None) -> dict:
    """name -> Runtime ready to use, or a missing(reason) dict."""
    from benchlib import missing

    out = {}
    for n in names or RUNTIMES:
        r = Runtime(n, work, source=podman_source if n == "podman" else None)
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
