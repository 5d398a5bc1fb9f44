"""`kvmvm run IMG true` against `podman run --rm IMG true` and crun, alternating, same image.

All three run the same busybox rootfs (benchmarks/containers.py builds it): podman and crun
from the directory, kvmvm from an EROFS image of it (`kvmvm run --rootfs`, what the image
store builds per image). For kvmvm the guest-side phases come from the VMM's timers
(KVMVM_RUN_TIMINGS): kernel start (first KVM_RUN) -> agent ready (its boot-timer write) ->
setup done -> exec started -> exit -> VM gone, in ms.

On a PVM host (no stock Linux guest) the script re-runs itself inside the standard-KVM test
host (tests/kvmhost): nested, software-emulated SVM, so correctness-grade numbers only.

    .venv/bin/python benchmarks/run.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import benchlib

PHASES = ["kernel_start", "agent_ready", "agent_hello", "setup_done", "exec_started", "exit", "vm_end"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    if os.path.exists("/sys/module/kvm_pvm") and not os.environ.get("KVMHOST_INSIDE"):
        sys.path.insert(0, str(benchlib.REPO))
        build = subprocess.run([benchlib.kvmvm_bin(), "image", "build", "--plain"], stdout=sys.stderr)
        if build.returncode:
            return build.returncode
        print("run: PVM host: running inside the standard-KVM test host "
              "(software-emulated SVM: correctness-grade numbers)", file=sys.stderr)
        return subprocess.call([sys.executable, "-m", "tests.kvmhost", "run", "--timeout", "1500", "--",
                                sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])],
                               cwd=benchlib.REPO)
    import containers

    work = tempfile.mkdtemp(prefix="kvmvm-bench-run-")
    rts: dict = {}
    try:
        rts = containers.runtimes(work, ["podman", "crun"])
        rootfs = containers.build_rootfs(work)
        erofs = os.path.join(work, "rootfs.erofs")
        subprocess.run(["mkfs.erofs", "--quiet", erofs, rootfs], check=True)
        timings = os.path.join(work, "timings.jsonl")
        env = dict(os.environ, KVMVM_RUN_TIMINGS=timings, XDG_RUNTIME_DIR=work)
        kvmvm = [benchlib.kvmvm_bin(), "run", "--rootfs", erofs, "true"]

        def kvmvm_run():
            return benchlib.run_timed(kvmvm, timeout=300, env=env)[0]

        runners = {"kvmvm run": kvmvm_run}
        for n, r in rts.items():
            if isinstance(r, dict):
                runners[n] = (lambda why: (lambda: (_ for _ in ()).throw(RuntimeError(why))))(r.get("missing", "?"))
            else:
                runners[n] = (lambda rt: (lambda: benchlib.run_timed(rt.cmd(["true"]), timeout=120)[0]))(r)
        total = benchlib.alternate(runners, a.runs, warmup=1)
        phases = []
        if os.path.exists(timings):
            phases = [json.loads(line) for line in open(timings) if line.strip()][-a.runs:]
        steps = {}
        for prev, cur in zip(PHASES, PHASES[1:]):
            vals = [p[cur] - p[prev] for p in phases if cur in p and prev in p]
            if vals:
                steps[f"{prev} -> {cur}"] = benchlib.summarize(vals)
        quirks = {n: r.quirks for n, r in rts.items() if not isinstance(r, dict)}
    finally:
        for r in rts.values():
            if not isinstance(r, dict):
                r.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    grade = "hardware KVM" if not os.environ.get("KVMHOST_INSIDE") else "nested, software-emulated SVM (correctness-grade)"
    result = {"host": benchlib.host_info(), "runs": a.runs, "true_ms": total, "phases_ms": steps,
              "ratio_kvmvm_to_podman": benchlib.ratio(total["kvmvm run"], total.get("podman")),
              "ratio_kvmvm_to_crun": benchlib.ratio(total["kvmvm run"], total.get("crun")), "grade": grade,
              "quirks": quirks}
    lines = [f"run IMG true ({grade}), {a.runs} alternating runs each, spawn to exit"]
    lines += benchlib.report_lines("run true", total, baseline="podman")
    lines += [f"  {n} quirks: {', '.join(q)}" for n, q in quirks.items() if q]
    lines += [f"  kvmvm phase {k}: median {v['median']:.1f} ms" for k, v in steps.items()]
    benchlib.emit(result, a.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
