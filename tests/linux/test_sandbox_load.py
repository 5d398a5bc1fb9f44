"""kvmvm.Sandbox under load (linux tier): 50 threads creating, using and dropping sandboxes,
at most 10 VMs at once in the emulated test host; nothing may be left.

Up to CRASHES_ALLOWED guests may crash (a triple fault or a kernel panic named by the
linux tier's GUEST_CRASHED lines): each must then end with the crash named (SandboxClosed, or
a warm start that fell back to a cold boot) and leave nothing behind like the rest; any other
error fails the test.

History: pending (not collected) until stop 23. With the test host's kvm_amd on nested
paging (npt=1, QEMU's TCG emulating it), 2 of 8 rounds passed in stop 22: restored guests
triple-faulted or oopsed on a copy-on-write page, agents went silent, the test host froze.
With npt=0 (shadow paging in L1, tests/kvmhost/image.py) it passed 5 rounds of 5 with no
guest crashed (stop 23), and is collected since. A command that overstays reports the
sandbox's state (_stuck_state).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from kvmvm.sandbox import Sandbox
from tests.linux.sandboxfixtures import image, private_snapshots, warm  # noqa: F401 (fixtures)
from tests.conftest import GUEST_CRASHED
from tests.linux.test_sandbox_more import _resources, _settled

CRASHES_ALLOWED = 1     # of 50 guests (see above; none crashed in 250 with npt=0)


def _crashed(text: str) -> bool:
    return any(m in text for m in GUEST_CRASHED)


def _stuck_state(sb) -> str:
    """What a sandbox whose command overstayed looks like, in one line: is the guest running
    (exits growing over 2 s), what does the session hold (unsent bytes, open streams), does a
    second command get through, and the console's last lines."""
    out = []
    try:
        vm = sb.vm.machine.vm
        s0 = vm.stats()
        time.sleep(2)
        s1 = vm.stats()
        out.append("exits in 2 s: " + ", ".join(f"{k}+{s1[k] - s0[k]}" for k in s1
                                                if isinstance(s1[k], int) and s1[k] != s0.get(k)))
        ses = sb.vm.session
        out.append(f"session: {len(ses.wbuf)} bytes unsent, streams "
                   + ", ".join(f"{sid}:{st.kind}{' done' if st.done else ''}" for sid, st in ses.streams.items()))
        out.append(f"channel error: {sb._channel.error if sb._channel else None}")
    except Exception as e:      # noqa: BLE001 - a diagnostic, never the failure itself
        out.append(f"state: {type(e).__name__}: {e}")
    try:
        r = sb.commands.run("true", timeout=30)
        out.append(f"a second command: exit {r.exit_code}")
    except Exception as e:      # noqa: BLE001
        out.append(f"a second command: {type(e).__name__}: {e}")
    try:
        lines = [ln for ln in Path(sb.vm.rundir.file("console.log")).read_text(errors="replace").splitlines()
                 if ln.strip()]
        out.append("console: " + " | ".join(lines[-8:]))
    except Exception as e:      # noqa: BLE001
        out.append(f"console: {type(e).__name__}: {e}")
    return "; ".join(out)


@pytest.mark.timeout(900)
def test_fifty_threads_create_use_and_drop_sandboxes_leaving_nothing(warm, request):
    """50 threads, each with its own sandbox: run, write, read, a background command left
    running, then kill(), the with-block, or only dropping it (garbage collection). In the
    emulated L1 at most 10 VMs run at once (a gate); every create, command and teardown
    happens concurrently with the others."""
    Sandbox.create(warm, memory_mib=256).kill()       # the pool and caches warmed before counting
    before = _resources()
    gate = threading.Semaphore(10)
    errors, warm_flags, ids, dropped = [], [], [], []
    lock = threading.Lock()

    def work(i: int) -> None:
        step = "waiting for the gate"
        try:
            with gate:
                step = "create"
                sb = Sandbox.create(warm, memory_mib=256, timeout=600)
                with lock:
                    warm_flags.append((sb.warm, sb.warm_error))
                    ids.append(sb.sandbox_id)
                    dropped.append(sb.vm.dropped_connections)
                step = "run"
                try:
                    r = sb.commands.run(f"echo {i}; hostname", timeout=120)
                except TimeoutError as e:
                    raise AssertionError(f"{e}; {_stuck_state(sb)}") from None
                assert r.stdout == f"{i}\n{sb.sandbox_id}\n", r.stdout
                step = "write"
                sb.files.write(f"/tmp/f{i}", f"data {i}")
                step = "read"
                assert sb.files.read(f"/tmp/f{i}") == f"data {i}"
                step = "background"
                sb.commands.run("sleep 600", background=True)     # teardown must end it
                step = "teardown"
                if i % 3 == 0:
                    sb.kill()
                elif i % 3 == 1:
                    with sb:
                        pass
                else:
                    del sb          # dropped: the finalizer tears it down
        except Exception as e:      # noqa: BLE001 - collected, asserted below
            errors.append(f"thread {i} at {step}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(i,), name=f"worker-{i}") for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(400)
    assert not [t.name for t in threads if t.is_alive()]
    # (in the report: how often the guest's connect() gave up and the host took its next one)
    request.node.user_properties += [("agent_connections_dropped_before_hello", sum(dropped)),
                                     ("sandboxes_that_dropped_one", sum(1 for d in dropped if d))]
    crashed = [e for e in errors if _crashed(e)] + [e for w, e in warm_flags if not w and _crashed(e or "")]
    request.node.user_properties += [("guests_crashed", len(crashed))]
    assert not [e for e in errors if not _crashed(e)], errors[:5]
    assert len(crashed) <= CRASHES_ALLOWED, crashed
    assert len(set(ids)) == 50
    leaked = _settled(before)
    assert not any(leaked.values()), leaked
    assert all(w or _crashed(e or "") for w, e in warm_flags), [e for w, e in warm_flags if not w][:3]
