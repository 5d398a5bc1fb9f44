"""PENDING (not collected): kvmvm.Sandbox under load (linux tier).
Status (stop 18), from one full linux-tier run in the test host:
- 50 threads creating, using and dropping sandboxes: 49 of 50 passed; one thread got
  "ProtocolError: agent closed the connection" (cause not found: the guest's agent closed
  its vsock connection; the test does not yet say at which step or why).
(The network=True test moved to sandbox_net_pending.py.)
Rename to test_sandbox_more_load.py once each passes in full linux-tier runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from kvmvm.sandbox import Sandbox
from tests.linux.sandboxfixtures import image, private_snapshots, warm  # noqa: F401 (fixtures)
from tests.linux.test_sandbox_more import ROOT, _resources, _settled


@pytest.mark.timeout(900)
def test_fifty_threads_create_use_and_drop_sandboxes_leaving_nothing(warm):
    """50 threads, each with its own sandbox: run, write, read, a background command left
    running, then kill(), the with-block, or only dropping it (garbage collection). In the
    emulated L1 at most 10 VMs run at once (a gate); every create, command and teardown
    happens concurrently with the others."""
    Sandbox.create(warm, memory_mib=256).kill()       # the pool and caches warmed before counting
    before = _resources()
    gate = threading.Semaphore(10)
    errors, warm_flags, ids = [], [], []
    lock = threading.Lock()

    def work(i: int) -> None:
        try:
            with gate:
                sb = Sandbox.create(warm, memory_mib=256, timeout=600)
                with lock:
                    warm_flags.append((sb.warm, sb.warm_error))
                    ids.append(sb.sandbox_id)
                r = sb.commands.run(f"echo {i}; hostname", timeout=120)
                assert r.stdout == f"{i}\n{sb.sandbox_id}\n", r.stdout
                sb.files.write(f"/tmp/f{i}", f"data {i}")
                assert sb.files.read(f"/tmp/f{i}") == f"data {i}"
                sb.commands.run("sleep 600", background=True)     # teardown must end it
                if i % 3 == 0:
                    sb.kill()
                elif i % 3 == 1:
                    with sb:
                        pass
                else:
                    del sb          # dropped: the finalizer tears it down
        except Exception as e:      # noqa: BLE001 - collected, asserted below
            errors.append(f"thread {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(i,), name=f"worker-{i}") for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(400)
    assert not [t.name for t in threads if t.is_alive()]
    assert not errors, errors[:5]
    assert len(set(ids)) == 50
    leaked = _settled(before)
    assert not any(leaked.values()), leaked
    assert all(w for w, _ in warm_flags), [e for w, e in warm_flags if not w][:3]
