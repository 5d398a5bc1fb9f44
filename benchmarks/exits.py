#!/usr/bin/env python3
"""Exit throughput: port-I/O exits per second, kvmvm vs QEMU microvm, `pio-loop N` guest.

The guest does N `outb` to port 0x80 (one VM exit each; neither VMM has a device
there) and ends. Two ways of counting time:
  - kvmvm (internal): `kvmvm boot --json` timings first_kvm_run -> end, and its own
    exit counter stats.exits_io;
  - both (wall): wall time of the pio-loop run minus the median wall time of the
    `hello` guest (same VMM, same flags), alternating runs; exits = N.

    .venv/bin/python benchmarks/exits.py [--n 100000] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def measure(n: int, runs: int) -> dict:
    pio, hello = bl.guest("pio-loop"), bl.guest("hello")
    internal = []   # (exits_io, ms first_kvm_run -> end)

    def kvmvm_pio():
        dt, p = bl.run_timed(bl.kvmvm_cmd(pio, str(n), as_json=True), timeout=120)
        d = json.loads(p.stdout.decode().strip().splitlines()[-1])
        t = d["timings_ms"]
        internal.append((d["stats"]["exits_io"], t["end"] - t["first_kvm_run"]))
        return dt

    runners = {
        "kvmvm-hello": lambda: bl.run_timed(bl.kvmvm_cmd(hello))[0],
        "kvmvm-pio": kvmvm_pio,
    }
    if bl.qemu_bin():
        runners["qemu-hello"] = lambda: bl.run_timed(bl.qemu_cmd(hello))[0]
        runners["qemu-pio"] = lambda: bl.run_timed(bl.qemu_cmd(pio, str(n)), timeout=120)[0]
    raw = bl.alternate(runners, runs, warmup=0)

    def wall_rate(vmm):
        a, b = raw.get(f"{vmm}-pio"), raw.get(f"{vmm}-hello")
        if a is None:
            return bl.missing("qemu-system-x86_64 not installed")
        if bl.is_missing(a) or bl.is_missing(b):
            return bl.missing((a if bl.is_missing(a) else b)["missing"])
        ms = a["median"] - b["median"]
        if ms <= 0:
            return bl.missing("pio run not slower than hello: N too small for this noise")
        return {"exits_per_s": round(n / (ms / 1000.0)), "ms": round(ms, 3), "exits": n}

    res = {"kvmvm (wall - hello)": wall_rate("kvmvm"), "qemu (wall - hello)": wall_rate("qemu")}
    if internal:
        rates = [e / (ms / 1000.0) for e, ms in internal if ms > 0]
        res["kvmvm (internal: first_kvm_run->end)"] = {
            "exits_per_s": round(statistics.median(rates)),
            "min": round(min(rates)), "max": round(max(rates)),
            "ms": round(statistics.median(ms for _, ms in internal), 3),
            "exits": internal[0][0]}
    r_wall = bl.ratio(res["kvmvm (wall - hello)"].get("exits_per_s"),
                      res["qemu (wall - hello)"].get("exits_per_s"))
    r_int = bl.ratio(res.get("kvmvm (internal: first_kvm_run->end)", {}).get("exits_per_s"),
                     res["qemu (wall - hello)"].get("exits_per_s"))
    return {
        "benchmark": "exits",
        "what": f"port-I/O exits per second, pio-loop {n}",
        "n": n, "runs": runs,
        "commands": {"kvmvm": " ".join(bl.kvmvm_cmd(pio, str(n), as_json=True)),
                     "qemu": " ".join(bl.qemu_cmd(pio, str(n)))},
        "raw_wall_ms": raw,
        "results": res,
        "ratio_kvmvm_qemu_wall": r_wall,
        "ratio_kvmvm_internal_qemu_wall": r_int,
        "host": bl.host_info(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100000, help="exits per run (pio-loop N)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = measure(a.n, a.runs)
    lines = [f"exits/s, pio-loop {a.n}, {a.runs} alternating runs"]
    for k, v in r["results"].items():
        lines.append(f"  {k:<38} " + (f"missing: {v['missing']}" if bl.is_missing(v)
                                        else f"{v['exits_per_s']:>8} exits/s  ({v['ms']:.0f} ms)"))
    lines.append(f"  ratio kvmvm/qemu exits/s (wall): {r['ratio_kvmvm_qemu_wall']}"
                 f"   (kvmvm internal / qemu wall): {r['ratio_kvmvm_internal_qemu_wall']}")
    bl.emit(r, a.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
