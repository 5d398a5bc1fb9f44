#!/usr/bin/env python3
"""Startup: process spawn to exit for `true`-equivalent work, VMs and containers.

kvmvm and QEMU microvm boot the tiny `hello` guest (prints a line, ends the VM);
the container runtimes run busybox `true` in a fresh container from a local
busybox rootfs. `kvmvm-bare` is kvmvm with QEMU's devices (--no-rng --no-acpi): the
kvmvm/QEMU ratio uses that pair. Runs alternate between runtimes, >= 10 each; min/median/max and
the median ratio of each to kvmvm. An absent or failing runtime is reported as
"missing: reason", never as a number.

    .venv/bin/python benchmarks/startup.py [--runs 10] [--only kvmvm,qemu,...] [--json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402
import containers  # noqa: E402

ALL = ["kvmvm", "kvmvm-bare", "qemu"] + containers.RUNTIMES


def measure(runs: int, only=None, work: str | None = None) -> dict:
    names = [n for n in ALL if not only or n in only]
    own_work = work is None
    work = work or tempfile.mkdtemp(prefix="kvmvm-bench-")
    hello = bl.guest("hello")
    runners, missing, commands, quirks = {}, {}, {}, {}
    rts = containers.runtimes(work, [n for n in names if n in containers.RUNTIMES])
    try:
        for n in names:
            if n in ("kvmvm", "kvmvm-bare"):
                if not os.path.exists(hello):
                    missing[n] = bl.missing(f"{hello} not built (make -C guest-images/tiny)")
                    continue
                c = bl.kvmvm_cmd(hello, extra=bl.KVMVM_BARE if n == "kvmvm-bare" else None)
            elif n == "qemu":
                if not bl.qemu_bin():
                    missing[n] = bl.missing("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
                    continue
                c = bl.qemu_cmd(hello)
            else:
                rt = rts[n]
                if bl.is_missing(rt):
                    missing[n] = rt
                    continue
                commands[n] = " ".join(rt.cmd(["/bin/true"]))
                if rt.quirks:
                    quirks[n] = rt.quirks
                runners[n] = (lambda rt=rt: bl.run_timed(rt.cmd(["/bin/true"]), timeout=60)[0])
                continue
            commands[n] = " ".join(c)
            runners[n] = (lambda c=c: bl.run_timed(c, timeout=60)[0])
        res = bl.alternate(runners, runs, warmup=1)
    finally:
        for rt in rts.values():
            if not bl.is_missing(rt):
                rt.cleanup()
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    res.update(missing)
    res = {n: res[n] for n in names}
    return {
        "benchmark": "startup",
        "what": "process spawn to exit: tiny hello guest (VMs) / busybox true (containers)",
        "runs": runs,
        "commands": commands,
        "quirks_detected": quirks,       # host workarounds applied (only where detected)
        "results": res,
        "ratio_to_kvmvm_median": {n: bl.ratio(res[n], res.get("kvmvm")) for n in names if n != "kvmvm"},
        # like for like: kvmvm-bare has QEMU's devices (no ACPI, no rng); "kvmvm" is the default
        "ratio_pair": "kvmvm-bare/qemu (same devices: no ACPI, no rng)",
        "ratio_kvmvm_qemu_median": bl.ratio(res.get("kvmvm-bare"), res.get("qemu")),
        "ratio_kvmvm_default_qemu_median": bl.ratio(res.get("kvmvm"), res.get("qemu")),
        "host": bl.host_info(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--only", type=str, default="", help="comma-separated subset of " + ",".join(ALL))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    only = [x for x in a.only.split(",") if x]
    r = measure(a.runs, only)
    lines = bl.report_lines(f"startup (spawn to exit), {a.runs} alternating runs each",
                            r["results"], "ms", baseline="kvmvm")
    bl.emit(r, a.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
