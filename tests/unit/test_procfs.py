"""kvmvm.procfs: the one reader of /proc/PID/stat (pid-checked files, reaping, tests)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from kvmvm import procfs


def test_start_time_names_one_process():
    me = procfs.start_time(os.getpid())
    assert isinstance(me, int) and me > 0
    assert procfs.start_time(os.getpid()) == me
    p = subprocess.Popen(["sleep", "30"])
    try:
        assert procfs.start_time(p.pid) >= me
    finally:
        p.kill()
        p.wait()
    assert procfs.start_time(p.pid) is None
    assert procfs.start_time(2**22 + 7) is None   # above pid_max's ceiling: never a process


def test_ended_counts_a_zombie_as_ended():
    p = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while not procfs.ended(p.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert procfs.stat_fields(p.pid)[0] == "Z"     # not reaped yet: its zombie
    assert procfs.ended(p.pid)
    p.wait()
    assert procfs.ended(p.pid) and procfs.ended(None)
    assert not procfs.ended(os.getpid())


def test_descendants_and_children():
    # a child that starts a grandchild and prints its pid
    p = subprocess.Popen([sys.executable, "-c", "import subprocess; c = subprocess.Popen(['sleep', '30']);"
                          " print(c.pid, flush=True); c.wait()"], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(p.stdout.readline())
        assert p.pid in procfs.children_map()[os.getpid()]
        d = procfs.descendants(p.pid)
        assert d == [grandchild]
        assert {p.pid, grandchild} <= set(procfs.descendants(os.getpid()))
    finally:
        os.kill(grandchild, 9)
        p.wait()
