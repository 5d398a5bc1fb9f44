#!/usr/bin/env python3
"""Tiny-guest startup: kvmvm vs QEMU microvm on the same `hello` guest.

Wall time from the benchmark's spawn of the process to its exit (the guest prints
one line and ends the VM), runs alternating, >= 10 each after a warm-up round. Two kvmvm
rows: its default (ACPI tables and virtio-rng on) and `kvmvm-bare` (--no-rng --no-acpi),
which has the same devices as the QEMU microvm configuration used (ACPI/PIT/PIC/RTC off):
the headline ratio is that like-for-like pair, kvmvm-bare/qemu; the default pair's ratio
is reported beside it, named.

    .venv/bin/python benchmarks/tiny_boot.py [--runs 20] [--json] [--qemu-variants]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def measure(runs: int, qemu_variants: bool = False, warmup: int = 1) -> dict:
    hello = bl.guest("hello")
    runners = {"kvmvm": lambda: bl.run_timed(bl.kvmvm_cmd(hello))[0],
               "kvmvm-bare": lambda: bl.run_timed(bl.kvmvm_cmd(hello, extra=bl.KVMVM_BARE))[0]}
    if bl.qemu_bin():
        runners["qemu"] = lambda: bl.run_timed(bl.qemu_cmd(hello))[0]
        if qemu_variants:
            runners["qemu-acpi-pit-pic"] = lambda: bl.run_timed(
                bl.qemu_cmd(hello, machine=bl.QEMU_MACHINE_DEFAULTISH))[0]
    res = bl.alternate(runners, runs, warmup=warmup)
    if not bl.qemu_bin():
        res["qemu"] = bl.missing("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
    return {
        "benchmark": "tiny_boot",
        "what": "process spawn to exit, tiny `hello` guest, 128 MiB, alternating runs",
        "commands": {"kvmvm": " ".join(bl.kvmvm_cmd(hello)),
                     "kvmvm-bare": " ".join(bl.kvmvm_cmd(hello, extra=bl.KVMVM_BARE)),
                     "qemu": " ".join(bl.qemu_cmd(hello))},
        "runs": runs,
        "results": res,
        "ratio_pair": "kvmvm-bare/qemu (same devices: no ACPI, no rng)",
        "ratio_kvmvm_qemu_median": bl.ratio(res["kvmvm-bare"], res["qemu"]),
        "ratio_kvmvm_qemu_min": bl.ratio(res["kvmvm-bare"], res["qemu"], key="min"),
        "ratio_kvmvm_default_qemu_median": bl.ratio(res["kvmvm"], res["qemu"]),
        "host": bl.host_info(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="runs of each (>= 10 recommended)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--qemu-variants", action="store_true",
                    help="also time QEMU microvm with ACPI/PIT/PIC left on")
    a = ap.parse_args(argv)
    r = measure(a.runs, a.qemu_variants)
    lines = bl.report_lines(f"tiny guest startup (spawn to exit), {a.runs} alternating runs each",
                            {k: v for k, v in r["results"].items()}, "ms", baseline="qemu")
    lines.append(f"  ratio kvmvm-bare/qemu (median, same devices): {r['ratio_kvmvm_qemu_median']}; "
                 f"kvmvm default (ACPI+rng)/qemu: {r['ratio_kvmvm_default_qemu_median']}")
    bl.emit(r, a.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
