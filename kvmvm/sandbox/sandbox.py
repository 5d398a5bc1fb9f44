"""kvmvm.Sandbox: a microVM for untrusted code, shaped like E2B's Python SDK.

    from kvmvm import Sandbox
    with Sandbox.create(image="python:3.12-slim", timeout=300) as sb:
        r = sb.commands.run("python3 -c 'print(6*7)'")      # r.stdout == "42\\n"
        sb.files.write("/app/x.py", "print('hi')")

Every sandbox is its own VM, destroyed by kill(), by leaving the `with` block, when it is
garbage collected, at interpreter exit, or when its lifetime (`timeout`) ends.
"""

from __future__ import annotations

import atexit
import contextlib
import secrets
import threading
import time
import weakref
from pathlib import Path

from kvmvm.errors import ConfigError, SandboxClosed, SandboxError, SandboxTimeout
from kvmvm.sandbox.commands import DEFAULT_OUTPUT_LIMIT, Commands, check_limit

DEFAULT_TIMEOUT_S = 300
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_CPUS = 32

_live: "weakref.WeakSet[Sandbox]" = weakref.WeakSet()
_live_lock = threading.Lock()
_pools: dict = {}           # template key -> [Restored]


def _kill_all_at_exit() -> None:
    with _live_lock:
        boxes = list(_live)
    for sb in boxes:
        with contextlib.suppress(Exception):
            sb.kill()
    with _live_lock:
        pooled = [r for key in list(_pools) for r in _pools.pop(key, [])]
    for r in pooled:
        with contextlib.suppress(Exception):
            r.discard()


atexit.register(_kill_all_at_exit)


def _positive(name: str, v, lo: int = 1, hi: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        raise ConfigError(f"{name}: a whole number {lo}..{hi if hi else ''} (got {v!r})".replace("..)", "+)"))
    return v


def _resolve_image(image):
    if image is None:
        raise ConfigError("image: name an image of the kvmvm image store (kvmvm images lists them)")
    if hasattr(image, "digest") and hasattr(image, "rootfs"):
        return image
    from kvmvm.images.store import ImageStore

    return ImageStore().resolve(image)


class _Teardown:
    """What a finalizer needs to end a sandbox without the Sandbox object itself."""

    def __init__(self):
        self.vm = None
        self.channel = None
        self.timer = None
        self.lock = threading.Lock()
        self.done = False

    def __call__(self) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
            timer, channel, vm = self.timer, self.channel, self.vm
            self.timer = self.channel = self.vm = None
        if timer is not None:
            timer.cancel()
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.close()
        if vm is not None:
            with contextlib.suppress(Exception):
                vm.close()


class Sandbox:
    """One sandbox. Make it with Sandbox.create(...) (or Sandbox.resume(snapshot))."""

    def __init__(self, *_a, **_kw):
        raise TypeError("use Sandbox.create(image=...) to make a sandbox")

    # --- creation ---
    @classmethod
    def create(cls, image=None, *, cpus: int = 1, memory_mib: int = 512, timeout: float | None = DEFAULT_TIMEOUT_S,
               network: bool = False, envs: dict | None = None, cwd: str | None = None, user: str | None = None,
               pids: int | None = None, disk_mib: int | None = None, hostname: str | None = None,
               warm: bool = True,
               output_limit: int = DEFAULT_OUTPUT_LIMIT, metadata: dict | None = None,
               _id: str | None = None) -> "Sandbox":
        """A new sandbox from a container image of the kvmvm store (a name, digest or Image).

        cpus, memory_mib: the VM's size. timeout: wall-clock lifetime in seconds (None: no
        limit; set_timeout() extends it). network: user-mode networking (off by default).
        envs/cwd/user: defaults for every command (over the image's own). pids: the most
        tasks the guest may run. disk_mib: the writable layer is a scratch disk of that
        size (else a tmpfs in guest memory, bounded by memory_mib). warm: restore from the
        image's warm snapshot when there is one (made by the first create), else boot cold.
        """
        img = _resolve_image(image)
        _positive("cpus", cpus, 1, MAX_CPUS)
        _positive("memory_mib", memory_mib, 128, 1 << 20)
        if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0):
            raise ConfigError(f"timeout: seconds > 0, or None (got {timeout!r})")
        if pids is not None:
            _positive("pids", pids, 16, 1 << 22)
        if disk_mib is not None:
            _positive("disk_mib", disk_mib, 16, 1 << 22)
        check_limit(output_limit)
        if cwd is not None and not (isinstance(cwd, str) and cwd.startswith("/")):
            raise ConfigError(f"cwd: an absolute path (got {cwd!r})")
        sid = _id or "sb-" + secrets.token_hex(6)
        if hostname is not None and not (isinstance(hostname, str) and 0 < len(hostname) <= 63
                                         and all(c.isalnum() or c in "-." for c in hostname)):
            raise ConfigError(f"hostname: 1..63 letters, digits, '-', '.' (got {hostname!r})")
        sb = cls.__new__(cls)
        sb._setup(img, sid, cpus=cpus, memory_mib=memory_mib, network=network, envs=envs, cwd=cwd,
                  user=user, pids=pids, hostname=hostname or sid, output_limit=output_limit, metadata=metadata,
                  disk_mib=disk_mib)
        t0 = time.monotonic_ns()
        sb._start(warm=warm)
        sb.create_ms = round((time.monotonic_ns() - t0) / 1e6, 3)
        sb.set_timeout(timeout)
        return sb

    def _setup(self, img, sid, *, cpus, memory_mib, network, envs, cwd, user, pids, hostname, output_limit,
               metadata, disk_mib=None) -> None:
        from kvmvm.sandbox.commands import build_env
        from kvmvm.sandbox.files import Files

        self.sandbox_id = sid
        self.image = img
        self.cpus, self.memory_mib, self.network, self.pids = cpus, memory_mib, bool(network), pids
        self.disk_mib = disk_mib
        self.hostname = hostname
        self.output_limit = output_limit
        self.metadata = dict(metadata or {})
        cfg = img.config or {}
        base = dict(e.split("=", 1) for e in (cfg.get("Env") or []) if "=" in e)
        base.setdefault("PATH", DEFAULT_PATH)
        base.setdefault("HOME", "/root")
        self.env = dict(e.split("=", 1) for e in build_env(base, envs))
        self.cwd = cwd or cfg.get("WorkingDir") or "/"
        self.user = user if user is not None else (cfg.get("User") or "")
        self._rlimits = []
        self.commands = Commands(self)
        self.files = Files(self)
        self._td = _Teardown()
        self._finalizer = weakref.finalize(self, self._td)
        self._killed_why: str | None = None
        self._deadline: float | None = None
        self._channel = None
        self.vm = None
        self.warm = False
        self.warm_error: str | None = None     # why a warm restore was given up, if it was

    def _start(self, warm: bool) -> None:
        from kvmvm.agent.rundir import RunDir
        from kvmvm.sandbox import vm as svm
        from kvmvm.sandbox.channel import Channel

        kernel, initrd = svm.boot_artifacts()
        key = svm.template_key(self.image, self.cpus, self.memory_mib, kernel, initrd, self.disk_mib)
        self.template_key = key
        tdir = svm.snapshot_root() / key
        use_warm = warm and not self.network
        vm = None
        if use_warm:
            with _live_lock:
                pool = _pools.get(key)
                restored = pool.pop() if pool else None
            if restored is None and svm.template_ready(tdir):
                try:
                    restored = svm.Restored(tdir, RunDir(root=_run_root()))
                except Exception as e:  # a template from another build, removed files: boot cold
                    restored = None
                    self.warm_error = f"restore: {type(e).__name__}: {e}"[:300]
            if restored is not None:
                try:
                    vm = restored.connect(self.hostname, svm.RESTORE_CONNECT_TIMEOUT_S)
                except SandboxError as e:      # the copy failed (and is gone): boot cold
                    self.warm_error = str(e)
        if vm is None:
            rd = RunDir(root=_run_root())
            with (svm.build_lock(tdir) if use_warm else contextlib.nullcontext(False)) as got:
                build = use_warm and got and not svm.template_ready(tdir)
                vm = svm.boot_cold(self.image, cpus=self.cpus, memory_mib=self.memory_mib, hostname=self.hostname,
                                   network=self.network, rundir=rd, template_dir=tdir if build else None,
                                   disk_mib=self.disk_mib)
        self.vm = vm
        self.warm = vm.warm
        self._td.vm = vm
        self._channel = Channel(vm.session, self.sandbox_id)
        self._td.channel = self._channel
        with _live_lock:
            _live.add(self)
        if self.pids is not None:
            self._apply_pids(self.pids)

    def _apply_pids(self, pids: int) -> None:
        # the guest's whole task table: what runs now (kernel threads, the agent) plus pids
        r = self.commands.run(["/bin/sh", "-c", 'n=$(cut -d/ -f2 /proc/loadavg | cut -d" " -f1); '
                               'echo $((n + %d)) > /proc/sys/kernel/threads-max' % pids],
                              user="0", check=False, timeout=30)
        if r.exit_code != 0:
            self.kill()
            raise SandboxError(f"cannot apply the pids limit inside the sandbox: {r.stderr.strip()[:200]}")

    @classmethod
    def _adopt(cls, vm, image, **kw) -> "Sandbox":
        """A Sandbox over a connected SandboxVm-like object (vm.session, vm.ended(),
        vm.close()): the host-tier tests run the real agent as a host process this way."""
        from kvmvm.sandbox.channel import Channel

        sb = cls.__new__(cls)
        opts = dict(cpus=1, memory_mib=512, network=False, envs=None, cwd=None, user=None, pids=None,
                    hostname="test", output_limit=DEFAULT_OUTPUT_LIMIT, metadata=None)
        opts.update(kw)
        sb._setup(image, "sb-" + secrets.token_hex(6), **opts)
        sb.vm = vm
        sb._td.vm = vm
        sb._channel = Channel(vm.session, sb.sandbox_id)
        sb._td.channel = sb._channel
        with _live_lock:
            _live.add(sb)
        sb.set_timeout(None)
        return sb

    # --- warm pool ---
    @classmethod
    def prewarm(cls, image, n: int = 1, *, cpus: int = 1, memory_mib: int = 512, disk_mib: int | None = None) -> int:
        """Keep n VMs of the image restored (paused, not yet connected) in this process, so
        that the next creates only start them. Makes the warm snapshot first if needed.
        Returns how many are pooled now."""
        from kvmvm.agent.rundir import RunDir
        from kvmvm.sandbox import vm as svm

        _positive("n", n, 0, 256)
        img = _resolve_image(image)
        kernel, initrd = svm.boot_artifacts()
        key = svm.template_key(img, cpus, memory_mib, kernel, initrd, disk_mib)
        tdir = svm.snapshot_root() / key
        if not svm.template_ready(tdir):
            cls.create(img, cpus=cpus, memory_mib=memory_mib, disk_mib=disk_mib).kill()
        if not svm.template_ready(tdir):
            raise SandboxError("prewarm: the warm snapshot could not be made (another process is making it?)")
        while True:
            with _live_lock:
                pool = _pools.setdefault(key, [])
                if len(pool) >= n:
                    return len(pool)
            r = svm.Restored(tdir, RunDir(root=_run_root()))
            with _live_lock:
                pool.append(r)

    # --- lifetime ---
    def set_timeout(self, timeout: float | None) -> None:
        """The sandbox is killed `timeout` seconds from now (None: never)."""
        if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0):
            raise ConfigError(f"timeout: seconds > 0, or None (got {timeout!r})")
        self._check_alive()
        with self._td.lock:
            if self._td.timer is not None:
                self._td.timer.cancel()
                self._td.timer = None
            self._deadline = None
            if timeout is not None:
                ref = weakref.ref(self)
                t = threading.Timer(timeout, _expire, (ref, timeout))
                t.daemon = True
                t.name = f"kvmvm-{self.sandbox_id}-timeout"
                self._td.timer = t
                self._deadline = time.monotonic() + timeout
                t.start()
        self.timeout = timeout

    @property
    def time_left(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def is_running(self) -> bool:
        return self._killed_why is None and self.vm is not None and not self.vm.ended()

    def _check_alive(self, force: bool = False) -> None:
        """Raise the error that says why this sandbox can do nothing more, if it cannot."""
        why = self._killed_why
        if why is None and self.vm is not None and (force or self.vm.ended()):
            if self.vm.ended():
                tail = self.vm.console_tail()
                why = f"the sandbox's VM ended ({self.vm.end_message()})" + (f"; console: {tail}" if tail else "")
            elif self._channel is not None and self._channel.error is not None:
                why = f"lost the connection to the sandbox's agent: {self._channel.error}"
            if why is not None:
                self._killed_why = why
                self._td()
        if why is None:
            return
        if why.startswith("timeout:"):
            raise SandboxTimeout(why[len("timeout:"):])
        raise SandboxClosed(why)

    def kill(self) -> None:
        """Stop the VM and remove everything it had on the host (idempotent)."""
        if self._killed_why is None:
            self._killed_why = f"sandbox {self.sandbox_id} was killed"
        self._td()
        with _live_lock:
            _live.discard(self)

    close = kill

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "killed"
        return f"<Sandbox {self.sandbox_id} {self.image.id[:12]} {state}>"

    # --- pause / resume ---
    def pause(self, path: str | None = None) -> str:
        """Snapshot this sandbox to a directory (default: under the kvmvm home) and kill it;
        Sandbox.resume(path) brings the same state back in a new VM. Processes running at the
        pause keep running after resume, but their output streams are not reattached."""
        from kvmvm.sandbox import vm as svm

        self._check_alive()
        if self.network:
            raise SandboxError("pause: sandboxes with network=True cannot be paused (their network helper is not saved)")
        target = Path(path) if path else svm.snapshot_root() / "paused" / self.sandbox_id
        if target.exists():
            raise ConfigError(f"pause: {target} already exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        import json

        try:
            svm.save_snapshot(self.vm.machine, target, self.vm.scratch)
        except BaseException:
            import shutil

            shutil.rmtree(target, ignore_errors=True)
            with contextlib.suppress(Exception):
                self.vm.machine.resume()
            raise
        store = getattr(self.image, "store", None)
        (target / "sandbox.json").write_text(json.dumps({
            "format": svm.TEMPLATE_FORMAT, "sandbox_id": self.sandbox_id, "image": self.image.digest,
            "store": str(store.root) if store is not None else None, "disk_mib": self.disk_mib,
            "rootfs_type": getattr(self.image, "rootfs_type", None),
            "cpus": self.cpus, "memory_mib": self.memory_mib, "env": self.env, "cwd": self.cwd, "user": self.user,
            "hostname": self.hostname, "output_limit": self.output_limit, "metadata": self.metadata}))
        self.kill()
        return str(target)

    @classmethod
    def resume(cls, snapshot: str, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> "Sandbox":
        """A sandbox from a pause() snapshot: the same files, processes and hostname."""
        import json

        from kvmvm.agent.rundir import RunDir
        from kvmvm.sandbox import vm as svm
        from kvmvm.sandbox.channel import Channel

        meta_path = Path(snapshot) / "sandbox.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            raise ConfigError(f"resume: {snapshot} is not a paused sandbox (no readable sandbox.json)") from None
        if meta.get("store"):         # the image store it came from (not only the default one)
            from kvmvm.images.store import DEFAULT_FSTYPE, ImageStore

            img = ImageStore(root=meta["store"], rootfs_type=meta.get("rootfs_type") or DEFAULT_FSTYPE
                             ).resolve(meta["image"])
        else:
            img = _resolve_image(meta["image"])
        sb = cls.__new__(cls)
        sb._setup(img, meta["sandbox_id"], cpus=meta["cpus"], memory_mib=meta["memory_mib"], network=False,
                  envs=None, cwd=meta["cwd"], user=meta["user"], pids=None, hostname=meta["hostname"],
                  output_limit=meta["output_limit"], metadata=meta.get("metadata"), disk_mib=meta.get("disk_mib"))
        sb.env = dict(meta["env"])
        restored = svm.Restored(Path(snapshot), RunDir(root=_run_root()))
        sb.vm = restored.connect(sb.hostname)
        sb.warm = True
        sb._td.vm = sb.vm
        sb._channel = Channel(sb.vm.session, sb.sandbox_id)
        sb._td.channel = sb._channel
        with _live_lock:
            _live.add(sb)
        sb.set_timeout(timeout)
        return sb

    # --- information ---
    def get_info(self) -> dict:
        return {"sandbox_id": self.sandbox_id, "image": self.image.digest, "names": list(self.image.names),
                "cpus": self.cpus, "memory_mib": self.memory_mib, "disk_mib": self.disk_mib,
                "network": self.network, "warm": self.warm,
                "hostname": self.hostname, "running": self.is_running(), "time_left": self.time_left,
                "warm_error": self.warm_error,
                "metadata": self.metadata}


def _expire(ref, timeout) -> None:
    sb = ref()
    if sb is not None and sb._killed_why is None:
        sb._killed_why = f"timeout:sandbox {sb.sandbox_id} reached its lifetime of {timeout:g} s and was killed"
        sb._td()
        with _live_lock:
            _live.discard(sb)


def _run_root() -> Path:
    from kvmvm.agent.rundir import runtime_root

    return runtime_root().parent / "sandbox-vms"
