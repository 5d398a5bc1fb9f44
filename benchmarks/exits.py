#!/usr/bin/env python3
"""Exit throughput: port-I/O exits per second, kvmvm vs QEMU microvm, `pio-loop N` guest.

The guest does N `outb` to port 0x80 (one VM exit each; neither VMM has a device
there) and ends. Two ways of counting time:
  - kvmvm (internal): `kvmvm boot --json` timings first_kvm_run -> end, and its own
    exit counter stats.exits_io;
  - both (wall): wall time of each pio-loop run minus the median wall time of the
    `hello` guest (same VMM, same flags), alternating runs after a warm-up round; exits = N.
The kvmvm/QEMU ratio compares the same quantity on both sides (wall - hello); kvmvm's
internal rate is reported beside it for information only, never in a ratio.

    .venv/bin/python benchmarks/exits.py [--n 100000] [--runs 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def wall_rates(pio_samples: list, hello_median: float, n: int) -> dict:
    """Exits/s of each pio-loop run (its wall time minus hello's median): median and spread."""
    ms = [x - hello_median for x in pio_samples]
    if not ms or statistics.median(ms) <= 0:
        return bl.missing("pio run not slower than hello: N too small for this noise")
    rates = sorted(n / (m / 1000.0) for m in ms if m > 0)
    return {"exits_per_s": round(statistics.median(rates)), "min": round(rates[0]),
            "max": round(rates[-1]), "runs": len(ms), "ms": round(statistics.median(ms), 3),
            "exits": n}


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
    raw = bl.alternate(runners, runs, warmup=1)
    del internal[:max(0, len(internal) - runs)]    # the warm-up round's sample is not a measurement

    def wall_rate(vmm):
        a, b = raw.get(f"{vmm}-pio"), raw.get(f"{vmm}-hello")
        if a is None:
            return bl.missing("qemu-system-x86_64 not installed")
        if bl.is_missing(a) or bl.is_missing(b):
            return bl.missing((a if bl.is_missing(a) else b)["missing"])
        return wall_rates(a["samples"], b["median"], n)

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
    return {
        "benchmark": "exits",
        "what": f"port-I/O exits per second, pio-loop {n}",
        "n": n, "runs": runs,
        "commands": {"kvmvm": " ".join(bl.kvmvm_cmd(pio, str(n), as_json=True)),
                     "qemu": " ".join(bl.qemu_cmd(pio, str(n)))},
        "raw_wall_ms": raw,
        "results": res,
        "ratio_kvmvm_qemu_wall": r_wall,
        "host": bl.host_info(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100000, help="exits per run (pio-loop N)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = measure(a.n, a.runs)
    lines = [f"exits/s, pio-loop {a.n}, {a.runs} alternating runs after a warm-up round"]
    for k, v in r["results"].items():
        lines.append(f"  {k:<38} " + (f"missing: {v['missing']}" if bl.is_missing(v)
                                        else f"{v['exits_per_s']:>8} exits/s (min {v['min']}, max {v['max']}; "
                                             f"{v['ms']:.0f} ms)"))
    lines.append(f"  ratio kvmvm/qemu exits/s, both wall - hello: {r['ratio_kvmvm_qemu_wall']}")
    bl.emit(r, a.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
