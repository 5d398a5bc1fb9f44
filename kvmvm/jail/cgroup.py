"""Resource limits for one jailed VM: a cgroup with cpu, memory and pids limits.

cgroup v2 (the unified hierarchy at /sys/fs/cgroup) is what users' hosts run; v1 (one
hierarchy per controller, as on hosts in "hybrid" mode) is still common. Either way the
VM's cgroup sits below the cgroup of the process that starts it, in a `kvmvm` folder.
"""

from __future__ import annotations

import os
import time

ROOT = "/sys/fs/cgroup"
CONTROLLERS = ("cpu", "memory", "pids")
PERIOD_US = 100_000


def is_v2() -> bool:
    return os.path.exists(f"{ROOT}/cgroup.controllers")


def _own(controller: str | None) -> str:
    """This process's cgroup path for a v1 controller (None: the v2 one)."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            names = ctrls.split(",") if ctrls else []
            if (controller is None and ctrls == "") or (controller in names):
                return path
    return "/"


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class Cgroup:
    """The cgroup(s) of one jail: create with limits, add the VM's pid, remove."""

    def __init__(self, name: str, paths: list[str] | None = None):
        self.name = name
        self.v2 = is_v2()
        if paths is None:
            if self.v2:
                paths = [f"{ROOT}/kvmvm/{name}"]   # the root cgroup may hold processes; ours may not
            else:
                paths = [os.path.join(f"{ROOT}/{c}" + _own(c), "kvmvm", name) for c in CONTROLLERS]
        self.paths = paths

    def create(self, memory_bytes: int, pids: int, cpus: float | None) -> None:
        if self.v2:
            self._create_v2(memory_bytes, pids, cpus)
        else:
            self._create_v1(memory_bytes, pids, cpus)

    def _create_v1(self, memory_bytes: int, pids: int, cpus: float | None) -> None:
        cpu, mem, pid = self.paths
        for p in self.paths:
            os.makedirs(p, exist_ok=True)
        _write(f"{mem}/memory.limit_in_bytes", str(memory_bytes))
        if os.path.exists(f"{mem}/memory.memsw.limit_in_bytes"):   # no escape into swap
            _write(f"{mem}/memory.memsw.limit_in_bytes", str(memory_bytes))
        _write(f"{pid}/pids.max", str(pids))
        if cpus:
            _write(f"{cpu}/cpu.cfs_period_us", str(PERIOD_US))
            _write(f"{cpu}/cpu.cfs_quota_us", str(int(cpus * PERIOD_US)))

    def _create_v2(self, memory_bytes: int, pids: int, cpus: float | None) -> None:
        (path,) = self.paths
        parent = os.path.dirname(path)
        # each level down to ours must hand the controllers on
        chain, p = [], parent
        while p != ROOT and p.startswith(ROOT):
            chain.append(p)
            p = os.path.dirname(p)
        os.makedirs(parent, exist_ok=True)
        for p in [ROOT, *reversed(chain)]:
            ctl = f"{p}/cgroup.subtree_control"
            have = open(ctl).read().split()
            want = [c for c in CONTROLLERS if c not in have]
            if want:
                _write(ctl, " ".join("+" + c for c in want))
        os.makedirs(path, exist_ok=True)
        _write(f"{path}/memory.max", str(memory_bytes))
        if os.path.exists(f"{path}/memory.swap.max"):
            _write(f"{path}/memory.swap.max", "0")
        _write(f"{path}/pids.max", str(pids))
        if cpus:
            _write(f"{path}/cpu.max", f"{int(cpus * PERIOD_US)} {PERIOD_US}")

    def add(self, pid: int) -> None:
        for p in self.paths:
            _write(f"{p}/cgroup.procs", str(pid))

    def remove(self) -> None:
        """Remove the cgroup(s); waits briefly for exiting tasks to leave."""
        for p in self.paths:
            for _ in range(100):
                try:
                    os.rmdir(p)
                    break
                except FileNotFoundError:
                    break
                except OSError:     # EBUSY while the last task is still exiting
                    time.sleep(0.01)


RUN_PREFIX = "run-"


class CpuQuota:
    """`kvmvm run --cpus 1.5` as podman means it: this process (the VMM, all its threads and
    what it starts) may use 1.5 CPUs of time, through a cgroup of its own; on leaving, the
    process goes back to the cgroup it came from and the cgroup is removed. One left by a
    killed kvmvm is empty, and the next CpuQuota removes it."""

    def __init__(self, cpus: float):
        self.cpus = cpus
        self.v2 = is_v2()
        name = f"{RUN_PREFIX}{os.getpid()}"
        if self.v2:
            self.home, self.base = f"{ROOT}{_own(None)}".rstrip("/"), f"{ROOT}/kvmvm"
        else:
            self.home = f"{ROOT}/cpu{_own('cpu')}".rstrip("/")
            self.base = f"{self.home}/kvmvm"
        self.path = f"{self.base}/{name}"
        self.entered = False

    def _reclaim(self) -> None:
        try:
            names = os.listdir(self.base)
        except OSError:
            return
        for n in names:
            if n.startswith(RUN_PREFIX) and n != os.path.basename(self.path):
                try:
                    os.rmdir(f"{self.base}/{n}")    # EBUSY while its kvmvm still runs
                except OSError:
                    pass

    def __enter__(self) -> "CpuQuota":
        self._reclaim()
        if self.v2:
            os.makedirs(self.base, exist_ok=True)
            ctl = f"{ROOT}/cgroup.subtree_control"
            if "cpu" not in open(ctl).read().split():
                _write(ctl, "+cpu")
            if "cpu" not in open(f"{self.base}/cgroup.subtree_control").read().split():
                _write(f"{self.base}/cgroup.subtree_control", "+cpu")
            os.makedirs(self.path, exist_ok=True)
            _write(f"{self.path}/cpu.max", f"{int(self.cpus * PERIOD_US)} {PERIOD_US}")
        else:
            os.makedirs(self.path, exist_ok=True)
            _write(f"{self.path}/cpu.cfs_period_us", str(PERIOD_US))
            _write(f"{self.path}/cpu.cfs_quota_us", str(int(self.cpus * PERIOD_US)))
        try:
            _write(f"{self.path}/cgroup.procs", str(os.getpid()))
        except OSError:
            os.rmdir(self.path)
            raise
        self.entered = True
        return self

    def __exit__(self, *exc) -> None:
        if self.entered:
            try:
                _write(f"{self.home}/cgroup.procs", str(os.getpid()))
            except OSError:
                return      # left for the next CpuQuota to reclaim
            self.entered = False
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:     # children (passt) still leaving
                time.sleep(0.01)
