"""`kvmvm run --cpus N` limits CPU time as podman's does: a cgroup of the run's own (real
cgroups of this host), left and removed at the end; one left by a killed run is reclaimed."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kvmvm.jail.cgroup import CpuQuota

pytestmark = pytest.mark.host

SPIN = r'''
import json, os, time
from kvmvm.jail.cgroup import CpuQuota
before = open("/proc/self/cgroup").read()
with CpuQuota(0.1) as q:
    inside = open("/proc/self/cgroup").read()
    t, c = time.monotonic(), time.process_time()
    while time.monotonic() - t < 1.5:
        pass
    used = time.process_time() - c
    stat = dict(l.split() for l in open(q.path + "/cpu.stat"))
    quota = open(q.path + ("/cpu.max" if q.v2 else "/cpu.cfs_quota_us")).read().split()[0]
print(json.dumps(dict(before=before, inside=inside, used=used, stat=stat, quota=quota, path=q.path,
                      after=open("/proc/self/cgroup").read(), left=os.path.exists(q.path))))
'''


def test_a_spinning_process_is_throttled_to_its_quota_and_the_cgroup_goes_away():
    r = subprocess.run([sys.executable, "-c", SPIN], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    name = os.path.basename(res["path"])
    assert name in res["inside"] and name not in res["before"]
    assert res["quota"] == "10000"                     # 0.1 CPU of each 100 ms period
    assert int(res["stat"]["nr_throttled"]) > 0
    assert res["used"] < 0.5, res["used"]              # 1.5 s of spinning, at most ~0.15 s of CPU
    assert res["after"] == res["before"] and not res["left"]


def test_a_cgroup_left_by_a_killed_run_is_reclaimed():
    q = CpuQuota(1)
    stale = f"{q.base}/run-999999999"
    os.makedirs(stale, exist_ok=True)
    with q:
        assert not os.path.exists(stale)
    assert not os.path.exists(q.path)
