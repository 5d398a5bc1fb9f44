#!/usr/bin/env python3
"""Start-up of several commands, run alternately: wall time from spawn to exit, the
process's CPU time (user + system, from wait4), and, for `kvmvm boot --json` commands, the
medians of the phases in its `timings_ms` (ms from the start of kvmvm's main).

Each argument is NAME=COMMAND; the commands run in turn, RUNS rounds after one warm-up
round, stdin from /dev/null, stdout and stderr into a pipe that is read to its end.
Typical use: a build against a snapshot of another commit, with QEMU and a bare
interpreter in the same rounds (the machine's load then weighs on all of them alike):

    .venv/bin/python benchmarks/startup_pairs.py --runs 20 \\
        'py=.venv/bin/python -c pass' \\
        'before=SNAPSHOT/bin/kvmvm boot --kernel guest-images/tiny/out/hello.elf' \\
        'after=.venv/bin/kvmvm boot --kernel guest-images/tiny/out/hello.elf'
    KVMVM_ALLOW_PVM=1 .venv/bin/python benchmarks/startup_pairs.py --runs 20 \\
        'before=SNAPSHOT/bin/kvmvm boot --json --timeout 0.05' 'after=.venv/bin/kvmvm boot --json --timeout 0.05'
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time


def run_once(cmd: list[str], devnull: int) -> tuple[float, float, dict]:
    """(wall ms, CPU ms, timings_ms of a --json line or {})."""
    r, w = os.pipe()
    t0 = time.perf_counter_ns()
    pid = os.posix_spawnp(cmd[0], cmd, os.environ, file_actions=[
        (os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_DUP2, w, 2)])
    os.close(w)
    out = []
    while chunk := os.read(r, 65536):
        out.append(chunk)
    _, _, ru = os.wait4(pid, 0)
    wall = (time.perf_counter_ns() - t0) / 1e6
    os.close(r)
    timings = {}
    for line in b"".join(out).decode(errors="replace").splitlines():
        if line.startswith("{") and '"timings_ms"' in line:
            try:
                timings = {k: v for k, v in json.loads(line)["timings_ms"].items()
                           if isinstance(v, (int, float))}
            except (ValueError, KeyError):
                pass
    return wall, (ru.ru_utime + ru.ru_stime) * 1e3, timings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("commands", nargs="+", metavar="NAME=COMMAND")
    a = ap.parse_args(argv)
    cmds = []
    for spec in a.commands:
        name, sep, cmd = spec.partition("=")
        if not sep or not cmd.strip():
            ap.error(f"expected NAME=COMMAND, got {spec!r}")
        cmds.append((name, shlex.split(cmd)))
    devnull = os.open(os.devnull, os.O_RDWR)
    samples = {n: {"wall": [], "cpu": [], "timings": {}} for n, _ in cmds}
    for rnd in range(a.runs + 1):
        for name, cmd in cmds:
            wall, cpu, timings = run_once(cmd, devnull)
            if rnd == 0:
                continue        # warm-up
            s = samples[name]
            s["wall"].append(wall)
            s["cpu"].append(cpu)
            for k, v in timings.items():
                s["timings"].setdefault(k, []).append(v)

    def summary(v):
        return {"median": round(statistics.median(v), 2), "min": round(min(v), 2), "n": len(v)}

    res = {n: {"wall_ms": summary(s["wall"]), "cpu_ms": summary(s["cpu"]),
               "timings_ms": {k: summary(v) for k, v in s["timings"].items()}}
           for n, s in samples.items()}
    if a.json:
        print(json.dumps({"runs": a.runs, "load": os.getloadavg(), "results": res}))
        return 0
    print(f"{a.runs} alternating rounds, ms median / min; load average now {os.getloadavg()[0]:.2f}")
    for n, r in res.items():
        t = "  ".join(f"{k} {v['median']:.1f}/{v['min']:.1f}" for k, v in r["timings_ms"].items())
        print(f"  {n:12} wall {r['wall_ms']['median']:7.1f}/{r['wall_ms']['min']:6.1f}  "
              f"cpu {r['cpu_ms']['median']:6.1f}/{r['cpu_ms']['min']:5.1f}  {t}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
