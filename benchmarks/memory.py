#!/usr/bin/env python3
"""Memory per instance: VMM overhead beyond guest memory, and per-container cost.

VMs (kvmvm, QEMU microvm): one process boots the tiny `halt` guest (128 MiB,
prints "halt: now", then idles in hlt). Once the line appears we read
/proc/PID/smaps: the guest-RAM mapping is the anonymous rw mapping whose size is
the guest memory (what the guest touched is its Rss); the VMM overhead is the
process's Rss / Pss minus that mapping's Rss.

Containers: the runtime runs busybox `sleep 60`; once the sleep process exists we
sum Rss / Pss over every process that stays for that container (the runtime's
waiting process, e.g. `runc run`, and the container's processes; for podman -d:
conmon plus the container), then remove the container.

Every runtime is measured --runs times (default 10), alternating; each figure is the median
with its min, max and n under "spread".

    .venv/bin/python benchmarks/memory.py [--runs 10] [--only ...] [--json]
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402
import containers  # noqa: E402

from kvmvm.procfs import children_map  # noqa: E402

KiB = 1024


def smaps_rollup(pid: int) -> dict:
    """Rss/Pss (KiB) of one process."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Private_Dirty"):
                out[k] = int(v.split()[0])
    return out


def guest_ram_rss_kib(pid: int, memory_mib: int) -> int:
    """Rss of the anonymous mapping(s) sized like guest RAM (size in [mem, mem+8 MiB])."""
    lo, hi = memory_mib * KiB, (memory_mib + 8) * KiB
    total, size, cand = 0, 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split()
                cand = len(parts) == 5 and parts[1].startswith("rw")   # anonymous: no path
                continue
            if line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Rss:") and cand and lo <= size <= hi:
                total += int(line.split()[1])
    return total


def tree(roots) -> list[int]:
    kids = children_map()
    seen, todo = [], list(roots)
    while todo:
        p = todo.pop()
        if p in seen or p <= 0:
            continue
        seen.append(p)
        todo += kids.get(p, [])
    return seen


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def tree_memory(pids) -> dict:
    tot = {"rss_kib": 0, "pss_kib": 0, "processes": []}
    for p in pids:
        try:
            m = smaps_rollup(p)
        except OSError:
            continue
        tot["rss_kib"] += m.get("Rss", 0)
        tot["pss_kib"] += m.get("Pss", 0)
        tot["processes"].append(f"{comm(p)}:{p}")
    return tot


def _wait_line(p: subprocess.Popen, needle: bytes, timeout: float) -> bool:
    buf, end = b"", time.monotonic() + timeout
    fd = p.stdout.fileno()
    while time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        if not r:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        if needle in buf:
            return True
    return False


def vmm_memory(cmd: list[str], memory_mib: int, timeout: float = 20.0) -> dict:
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if not _wait_line(p, b"halt: now", timeout):
            err = b""
            if p.poll() is not None:
                err = p.stderr.read()[-300:]
            return bl.missing(f"halt guest did not come up in {timeout:g} s "
                              f"(exit {p.poll()}): {err.decode(errors='replace').strip()}")
        time.sleep(0.2)   # let the VMM settle after the guest's last exit
        m = smaps_rollup(p.pid)
        g = guest_ram_rss_kib(p.pid, memory_mib)
        return {"rss_mib": round(m["Rss"] / KiB, 2), "pss_mib": round(m["Pss"] / KiB, 2),
                "guest_touched_mib": round(g / KiB, 2),
                "overhead_rss_mib": round((m["Rss"] - g) / KiB, 2),
                "overhead_pss_mib": round((m["Pss"] - g) / KiB, 2)}
    finally:
        p.kill()
        p.wait()


def container_memory(rt, timeout: float = 30.0) -> dict:
    detach = rt.name == "podman"
    cmd = rt.cmd(["/bin/sleep", "60"], detach=detach)
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        if detach:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                return bl.missing(f"podman run -d exited {p.returncode}: {err.decode(errors='replace').strip()[-200:]}")
            cid = rt.ids[-1]
            q = subprocess.run(["podman"] + rt.podman_flags +
                               ["inspect", "-f", "{{.State.ConmonPid}} {{.State.Pid}}", cid],
                               capture_output=True, text=True, timeout=30)
            roots = [int(x) for x in q.stdout.split()]
        else:
            roots = [p.pid]
        found = containers.wait_for(lambda: any(comm(x) == "sleep" for x in tree(roots)), timeout)
        if not found:
            err = p.stderr.read()[-200:] if p.poll() is not None else b""
            return bl.missing(f"container did not start (exit {p.poll()}): {err.decode(errors='replace').strip()}")
        time.sleep(0.2)
        m = tree_memory(tree(roots))
        return {"rss_mib": round(m["rss_kib"] / KiB, 2), "pss_mib": round(m["pss_kib"] / KiB, 2),
                "processes": m["processes"]}
    finally:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
        p.wait()
        rt.cleanup()


def combine(samples: list) -> dict:
    """Runs of one runtime -> the median of each number, its spread, and any failure."""
    ok = [x for x in samples if not bl.is_missing(x)]
    if not ok:
        return samples[0]
    out = dict(ok[0])
    spread = {}
    for k, v in ok[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [x[k] for x in ok]
            sm = bl.summarize(vals)
            out[k] = round(sm["median"], 2)
            spread[k] = {"min": round(sm["min"], 2), "max": round(sm["max"], 2), "n": sm["n"]}
    out["spread"] = spread
    failed = [x["missing"] for x in samples if bl.is_missing(x)]
    out["failed_runs"] = len(failed)
    if failed:
        out["failures"] = failed[:3]
    return out


def measure(only=None, memory_mib: int = 128, runs: int = 10) -> dict:
    halt = bl.guest("halt")
    names = [n for n in ["kvmvm", "qemu"] + containers.RUNTIMES if not only or n in only]
    samples, cmds, res = {n: [] for n in names}, {}, {}
    work = tempfile.mkdtemp(prefix="kvmvm-bench-")
    try:
        rts = containers.runtimes(work, [n for n in names if n in containers.RUNTIMES])
        for _ in range(runs):
            for n in names:
                if n == "kvmvm":
                    c = bl.kvmvm_cmd(halt, memory_mib=memory_mib)
                    cmds[n] = " ".join(c)
                    samples[n].append(vmm_memory(c, memory_mib))
                elif n == "qemu":
                    if not bl.qemu_bin():
                        res[n] = bl.missing("qemu-system-x86_64 not installed")
                        continue
                    c = bl.qemu_cmd(halt, memory_mib=memory_mib)
                    cmds[n] = " ".join(c)
                    samples[n].append(vmm_memory(c, memory_mib))
                else:
                    rt = rts[n]
                    if bl.is_missing(rt):
                        res[n] = rt
                        continue
                    cmds[n] = " ".join(rt.cmd(["/bin/sleep", "60"], detach=n == "podman"))
                    rt.ids.clear()
                    samples[n].append(container_memory(rt))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for n in names:
        if n not in res:
            res[n] = combine(samples[n])
    return {
        "benchmark": "memory",
        "what": (f"VMs: VMM process Rss/Pss beyond the guest-RAM mapping's Rss, halt guest, {memory_mib} MiB; "
                 "containers: Rss/Pss summed over the processes that stay per container (busybox sleep); "
                 f"median of {runs} alternating runs each"),
        "runs": runs,
        "commands": cmds,
        "results": res,
        "host": bl.host_info(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", type=str, default="")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = measure([x for x in a.only.split(",") if x], runs=a.runs)
    lines = [f"memory per instance (MiB), median of {a.runs} runs (min-max)"]
    for n, v in r["results"].items():
        if bl.is_missing(v):
            lines.append(f"  {n:<15} missing: {v['missing']}")
        elif "overhead_rss_mib" in v:
            sp = v["spread"]["overhead_rss_mib"]
            lines.append(f"  {n:<15} VMM overhead Rss {v['overhead_rss_mib']:.1f} ({sp['min']}-{sp['max']})"
                         f"  Pss {v['overhead_pss_mib']:.1f}"
                         f"  (process Rss {v['rss_mib']:.1f}, guest touched {v['guest_touched_mib']:.2f})")
        else:
            lines.append(f"  {n:<15} Rss {v['rss_mib']:.1f}  Pss {v['pss_mib']:.1f}  ({', '.join(v['processes'])})")
    bl.emit(r, a.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
