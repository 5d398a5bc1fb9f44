#!/usr/bin/env python3
"""In-process API throughput: tiny `hello` VMs created, booted to their end and torn down
per second, by THREADS threads of one Python process (kvmvm.machine.boot).

The C core releases the GIL in KVM calls, so threads overlap the kernel's waits (an SRCU
grace period per memory slot on some hosts) with other VMs' Python work.

    .venv/bin/python benchmarks/api_rate.py [--seconds 5] [--threads 1,2,4] [--json]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def rate(threads: int, seconds: float, memory_mib: int = 128) -> dict:
    bl.use_kvmvm_tree()
    from kvmvm.machine import MachineConfig, boot

    hello = bl.guest("hello")
    devnull = os.open(os.devnull, os.O_WRONLY)
    counts, errors = [0] * threads, []
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        try:
            while time.perf_counter() < stop:
                res = boot(MachineConfig(kernel=hello, memory_mib=memory_mib, serial_out_fd=devnull))
                if res.status != 0:
                    raise RuntimeError(f"hello ended with status {res.status}: {res.message}")
                counts[i] += 1
        except Exception as e:  # noqa: BLE001 - reported
            errors.append(f"{type(e).__name__}: {e}")

    cpu0, t0 = time.process_time(), time.perf_counter()
    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    os.close(devnull)
    n = sum(counts)
    return {"threads": threads, "vms": n, "seconds": round(wall, 3), "vms_per_s": round(n / wall, 1),
            "cpu_ms_per_vm": round(cpu * 1000 / n, 2) if n else None, "errors": errors[:3]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="per thread count")
    ap.add_argument("--threads", default="1,2,4", help="comma-separated thread counts")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args(argv)
    runs = [rate(int(t), a.seconds) for t in a.threads.split(",")]
    r = {"benchmark": "api_rate", "what": "tiny hello VMs created, booted and torn down per second, "
         "one process, kvmvm.machine.boot from N threads", "runs": runs, "host": bl.host_info()}
    lines = ["in-process API: tiny VMs created+booted+torn down per second"]
    lines += [f"  {x['threads']} thread(s): {x['vms_per_s']} VMs/s ({x['vms']} in {x['seconds']} s, "
              f"{x['cpu_ms_per_vm']} ms CPU each){'  ERRORS: ' + '; '.join(x['errors']) if x['errors'] else ''}"
              for x in runs]
    bl.emit(r, a.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
