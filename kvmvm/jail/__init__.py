"""The jailer: run one VM the way Firecracker's jailer runs firecracker, as one flag.

The process that asked (`kvmvm boot --jail`) stays outside as the keeper: it reclaims what
dead runs left, makes the jail's folder and cgroup, forks the VM process into a new PID
namespace, forwards SIGTERM/SIGINT/SIGHUP to it, and cleans up on every ending. The VM
process unshares mount, IPC, UTS (and, asked for, network) namespaces, pivots into a tmpfs
root holding only what the VM needs (kernel, initrd, drives, the vsock socket's folder,
/dev/kvm, /dev/net/tun, /dev/urandom), builds the VM there, then makes that root read-only,
nodev and noexec, sets rlimits, drops to an unprivileged uid/gid with no_new_privs and
runs the VM under its seccomp filters. docs/security.md says what each step protects.
"""

from __future__ import annotations

import os
import signal
import stat
import sys

from kvmvm.errors import ConfigError, KvmvmError
from kvmvm.record import record

DEFAULT_ID = 990_000        # uid and gid of a jailed VM unless --jail-uid/--jail-gid
OVERHEAD_MIB = 256          # memory for the VMM itself on top of guest RAM
GIB = 1 << 30

# what the VM process imports before pivot_root: nothing outside the jail is readable after
PRELOAD = (
    "json", "termios", "threading", "logging", "errno", "resource", "mmap", "stat", "kvmvm.machine",
    "kvmvm.vm", "kvmvm.image.index",
    "kvmvm.bindings", "kvmvm.console", "kvmvm.seccomp", "kvmvm.host", "kvmvm.devices",
    "kvmvm.devices.virtio", "kvmvm.devices.virtio.blk", "kvmvm.devices.virtio.net",
    "kvmvm.devices.virtio.rng", "kvmvm.devices.virtio.vsock", "kvmvm.boot.acpi",
    "kvmvm.boot.aml", "kvmvm.boot.bootparams", "kvmvm.boot.bzimage", "kvmvm.boot.elf",
    "kvmvm.boot.layout", "kvmvm.boot.mptable", "kvmvm.boot.pvh",
)


class JailError(KvmvmError):
    exit_code = 1


@record
class JailConfig:
    uid: int = DEFAULT_ID
    gid: int = DEFAULT_ID
    netns: str | None = None          # None: the host's; "new": a new empty one; else a path to join
    memory_mib: int | None = None     # cgroup memory limit (default: guest RAM + OVERHEAD_MIB)
    pids: int = 128
    cpus: float | None = None         # CPU time in CPUs (default: vCPUs + 1)
    nofile: int = 2048
    fsize_mib: int | None = None      # largest file it may write (default: max(1 GiB, drives))
    probe: str | None = None          # test hook: Python run jailed instead of the VM

    def validate(self) -> None:
        for name in ("uid", "gid"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 < v < 2**32 - 1:
                raise ConfigError(f"--jail-{name} must be between 1 and {2**32 - 2} (got {v})")
        if self.pids < 8:
            raise ConfigError(f"--jail-pids must be at least 8 (got {self.pids})")
        if self.cpus is not None and not 0.01 <= self.cpus <= 1024:
            raise ConfigError(f"--jail-cpu must be between 0.01 and 1024 (got {self.cpus})")
        if self.memory_mib is not None and self.memory_mib < 16:
            raise ConfigError(f"--jail-memory must be at least 16 MiB (got {self.memory_mib})")
        if self.netns not in (None, "new") and not os.path.exists(self.netns):
            raise ConfigError(f"--jail-netns: no such network namespace file: {self.netns}")


# --- what goes into the jail ---

@record
class Entry:
    src: str       # host path
    dst: str       # path inside the jail
    kind: str      # "file" | "dir" | "dev"
    ro: bool = False


def _spec_path(spec: str) -> tuple[str, str]:
    path, sep, rest = spec.partition(",")
    return path, (sep + rest)


def plan(cfg) -> tuple[object, list[Entry], list[str]]:
    """(the config as seen inside the jail, what to map in, host sockets to remove after)."""
    import copy

    jcfg = copy.copy(cfg)
    entries = [Entry(cfg.kvm_path, "/dev/kvm", "dev"), Entry("/dev/urandom", "/dev/urandom", "dev")]
    sockets = []
    entries.append(Entry(cfg.kernel, "/boot/kernel", "file", ro=True))
    jcfg.kernel = "/boot/kernel"
    if cfg.initrd:
        entries.append(Entry(cfg.initrd, "/boot/initrd", "file", ro=True))
        jcfg.initrd = "/boot/initrd"
    drives = []
    for i, spec in enumerate(cfg.drives):
        path, opts = _spec_path(spec)
        ro = "ro" in opts.split(",")
        kind = "file" if not os.path.exists(path) or not stat.S_ISBLK(os.stat(path).st_mode) else "dev"
        entries.append(Entry(path, f"/drives/{i}", kind, ro=ro))
        drives.append(f"/drives/{i}{opts}")
    jcfg.drives = drives
    if cfg.nets:
        entries.append(Entry("/dev/net/tun", "/dev/net/tun", "dev"))
    if cfg.vsock:
        parts = dict(p.partition("=")[::2] for p in cfg.vsock.split(","))
        uds = parts.get("uds")
        if uds:
            uds = os.path.abspath(uds)
            entries.append(Entry(os.path.dirname(uds), "/vsock", "dir"))
            parts["uds"] = "/vsock/" + os.path.basename(uds)
            jcfg.vsock = ",".join(f"{k}={v}" for k, v in parts.items())
            sockets.append(uds)
    for e in entries:
        if not os.path.exists(e.src):
            what = {"/boot/kernel": "kernel image", "/boot/initrd": "initrd",
                    "/vsock": "vsock socket folder"}.get(
                        e.dst, "device" if e.dst.startswith("/dev/") else "image")
            raise ConfigError(f"{what} not found: {e.src}")
    return jcfg, entries, sockets


def _fsize_limit(jc: JailConfig, entries: list[Entry]) -> int:
    if jc.fsize_mib is not None:
        return jc.fsize_mib << 20
    biggest = max([os.path.getsize(e.src) for e in entries if e.dst.startswith("/drives/")
                   and e.kind == "file"] or [0])
    return max(GIB, biggest)


# --- the keeper (outside) ---

def run(cfg, jc: JailConfig, boot) -> int:
    """Run boot(cfg_inside_jail, after_build) in a jailed child; its exit status."""
    from kvmvm.jail import state
    from kvmvm.jail.cgroup import Cgroup
    from kvmvm.jail.syscalls import CLONE_NEWPID, unshare

    jc.validate()
    if os.geteuid() != 0:
        raise JailError("--jail needs root (namespaces, pivot_root, cgroups, dropping to --jail-uid)")
    if jc.probe is not None and os.environ.get("KVMVM_TEST_HOOKS") != "1":
        raise ConfigError("--jail-probe is a test hook: it needs KVMVM_TEST_HOOKS=1")
    jcfg, entries, sockets = plan(cfg)
    for s in sockets:
        if os.path.exists(s):
            raise ConfigError(f"vsock socket path already exists: {s}")
    root = state.jail_root()
    os.makedirs(root, mode=0o700, exist_ok=True)
    state.reclaim(root)
    jid = state.new_id()
    jdir = os.path.join(root, jid)
    cg = Cgroup(f"kvmvm-{jid}")
    st = state.JailState(jid, os.getpid(), state.start_time(os.getpid()) or 0, cg.paths, sockets)
    st.save(root)
    os.mkdir(jdir, 0o700)
    try:
        mem = (jc.memory_mib or cfg.memory_mib + OVERHEAD_MIB) << 20
        try:
            cg.create(mem, jc.pids, jc.cpus if jc.cpus is not None else cfg.cpus + 1)
        except OSError as e:
            raise JailError(f"jail: cannot set up the cgroup: {e}") from None
        fsize = _fsize_limit(jc, entries)
        sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
        rfd, wfd = os.pipe()
        try:
            unshare(CLONE_NEWPID)    # the next child is pid 1 of a new PID namespace
        except OSError as e:
            raise JailError(f"jail: {e}") from None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(wfd)
            status = 1
            try:
                status = _child(jcfg, jc, jdir, rfd, entries, fsize, boot)
            except KvmvmError as e:
                sys.stderr.write(f"kvmvm: {e}\n")
                status = e.exit_code
            except KeyboardInterrupt:   # stopped before the VM ran
                status = 130
            except BaseException as e:   # never return into the keeper's code
                if os.environ.get("KVMVM_DEBUG") == "1":
                    import traceback

                    traceback.print_exc()
                sys.stderr.write(f"kvmvm: jail: {type(e).__name__}: {e}\n")
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(status)
        os.close(rfd)
        try:
            cg.add(pid)
            os.write(wfd, b"g")
        except OSError as e:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise JailError(f"jail: cannot start the VM process: {e}") from None
        finally:
            os.close(wfd)
        status = _keep(pid, sigs)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return status
    finally:
        state.cleanup(root, st)


def _keep(pid: int, sigs: set) -> int:
    """Forward signals sent to the keeper until the VM process ends; its exit status."""
    while True:
        info = signal.sigwaitinfo(sigs)
        if info.si_signo == signal.SIGCHLD:
            wpid, ws = os.waitpid(pid, os.WNOHANG)
            if wpid == pid:
                if os.WIFSIGNALED(ws):
                    sig = os.WTERMSIG(ws)
                    sys.stderr.write(f"kvmvm: jail: the VM process was killed by "
                                     f"{signal.Signals(sig).name}\n")
                    return 128 + sig
                return os.WEXITSTATUS(ws)
        elif info.si_code <= 0:
            # sent by a process (kill): pass it on. A terminal's Ctrl-C (SI_KERNEL) already
            # reached the VM process, which shares the foreground process group.
            try:
                os.kill(pid, info.si_signo)
            except ProcessLookupError:
                pass


# --- the VM process (inside) ---

def _close_fds(keep: int) -> None:
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)


def _child(jcfg, jc: JailConfig, jdir: str, rfd: int, entries: list[Entry], fsize: int, boot) -> int:
    import importlib

    from kvmvm.jail import syscalls as js

    def stop(signum, frame):
        raise KeyboardInterrupt

    # pid 1 of a namespace gets only the signals it handles: SIGTERM/SIGHUP from the keeper
    # must stop it while it sets up, too (the console's handlers take over while it runs)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, stop)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    js.prctl(js.PR_SET_PDEATHSIG, signal.SIGKILL)   # the keeper gone (kill -9): so are we
    if os.read(rfd, 1) != b"g":
        return 1
    _close_fds(rfd)
    os.close(rfd)
    for m in PRELOAD:
        importlib.import_module(m)
    if jc.netns not in (None, "new"):
        fd = os.open(jc.netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            js.setns(fd, js.CLONE_NEWNET)
        finally:
            os.close(fd)
    js.unshare(js.CLONE_NEWNS | js.CLONE_NEWIPC | js.CLONE_NEWUTS
               | (js.CLONE_NEWNET if jc.netns == "new" else 0))
    js.sethostname("kvmvm-jail")
    js.mount(None, "/", None, js.MS_REC | js.MS_PRIVATE)
    js.mount("kvmvm-jail", jdir, "tmpfs", js.MS_NOSUID, "size=64k,nr_inodes=64,mode=0755")
    for e in entries:
        _map(jdir, e)
    os.chdir(jdir)
    js.pivot_root(".", ".")      # the old root is stacked on the new one: detach it
    js.umount2(".", js.MNT_DETACH)
    os.chdir("/")

    def after_build() -> None:
        """The VM is built (every file it needs is open): lock the jail down."""
        import resource

        js.mount(None, "/", None, js.MS_REMOUNT | js.MS_RDONLY | js.MS_NOSUID | js.MS_NODEV
                 | js.MS_NOEXEC)
        resource.setrlimit(resource.RLIMIT_NOFILE, (jc.nofile, jc.nofile))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))     # no dumps of guest memory
        os.setgroups([])
        os.setresgid(jc.gid, jc.gid, jc.gid)
        os.setresuid(jc.uid, jc.uid, jc.uid)
        js.prctl(js.PR_SET_PDEATHSIG, signal.SIGKILL)    # a change of uid cleared it
        js.prctl(js.PR_SET_NO_NEW_PRIVS, 1)
        if jc.probe is not None:
            _probe(jc.probe)

    return boot(jcfg, after_build)


def _map(jdir: str, e: Entry) -> None:
    from kvmvm.jail import syscalls as js

    dst = jdir + e.dst
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if e.kind == "dev" and e.dst.startswith("/dev/"):
        st = os.stat(e.src)
        kind = stat.S_IFCHR if stat.S_ISCHR(st.st_mode) else stat.S_IFBLK
        os.mknod(dst, kind | (0o666 if e.dst == "/dev/urandom" else 0o600), st.st_rdev)
        if e.dst == "/dev/urandom":
            os.chmod(dst, 0o666)
        return
    if e.kind == "dir":
        os.makedirs(dst, exist_ok=True)
    else:
        open(dst, "w").close()
    js.mount(e.src, dst, None, js.MS_BIND)
    flags = js.MS_REMOUNT | js.MS_BIND | js.MS_NOSUID | js.MS_NOEXEC | (js.MS_RDONLY if e.ro else 0)
    if e.kind != "dev":
        flags |= js.MS_NODEV
    js.mount(None, dst, None, flags)


def _probe(code: str) -> None:
    """Test hook: run `code` as the jailed VM process would run, then end the process."""
    status = 0
    try:
        exec(compile(code, "<jail-probe>", "exec"), {"__name__": "__probe__"})
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    except BaseException as e:
        sys.stdout.write(f"probe: {type(e).__name__}: {e}\n")
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
