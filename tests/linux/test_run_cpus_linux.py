"""`kvmvm run --cpus 0.5` in the test host (linux tier), with cgroup v2: the guest has one
vCPU, the run's VMM sits in a cgroup of its own with a quota of half a CPU while it runs,
and the cgroup is gone afterwards. (The host tier tests the v1 hierarchy of its host.)"""

from __future__ import annotations

import os
import subprocess
import time

from tests.linux.test_run_linux import KVMVM, TIMEOUT, image, xdg  # noqa: F401 (fixtures)

CG = "/sys/fs/cgroup"


def test_cpus_is_a_cpu_time_quota(image, xdg):
    mounted = False
    if not os.path.exists(f"{CG}/cgroup.controllers") and not os.path.isdir(f"{CG}/cpu"):
        subprocess.run(["mount", "-t", "cgroup2", "none", CG], check=True)
        mounted = True
    try:
        v2 = os.path.exists(f"{CG}/cgroup.controllers")
        env = dict(os.environ, XDG_RUNTIME_DIR=xdg)
        p = subprocess.Popen([*KVMVM, "run", "--cpus", "0.5", image[0], "sh", "-c",
                              "grep -c ^processor /proc/cpuinfo; sleep 5; echo done"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        want = f"run-{p.pid}"
        seen, quota, deadline = "", "", time.monotonic() + TIMEOUT
        while p.poll() is None and time.monotonic() < deadline and not quota:
            try:
                seen = open(f"/proc/{p.pid}/cgroup").read()
            except OSError:
                break
            for line in seen.splitlines():
                path = line.split(":", 2)[2]
                if path.endswith("/" + want):
                    base = f"{CG}{path}" if v2 else f"{CG}/cpu{path}"
                    quota = open(f"{base}/cpu.max" if v2 else f"{base}/cpu.cfs_quota_us").read().split()[0]
            time.sleep(0.2)
        out, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, err
        assert out.split() == ["1", "done"], out
        assert quota == "50000", (quota, seen, err)
        assert "CPU time not limited" not in err, err
        left = [d for d in os.listdir(f"{CG}/kvmvm" if v2 else f"{CG}/cpu/kvmvm") if d == want] \
            if os.path.isdir(f"{CG}/kvmvm" if v2 else f"{CG}/cpu/kvmvm") else []
        assert left == [], "the run's cgroup is still there"
    finally:
        if mounted:
            subprocess.run(["umount", CG])
