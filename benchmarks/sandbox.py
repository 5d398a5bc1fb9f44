"""kvmvm.Sandbox: time to the first command's result cold and warm, sandboxes per second,
commands per second in one sandbox, and host memory per idle sandbox; side by side with
`podman run --rm IMG true` and `podman exec CTR true` on the same image.

    .venv/bin/python benchmarks/sandbox.py [--image REF] [--runs 5] [--idle 4] [--json]

Needs a Linux-capable /dev/kvm (on PVM hosts: inside the kvmhost L1,
`python -m tests.kvmhost run -- .venv/bin/python benchmarks/sandbox.py`). Without --image it
builds a busybox image into a temporary store. Warm snapshots go to a temporary directory.
Memory: the growth of this process's PSS per idle sandbox (guest pages it touched included;
the shared snapshot pages are counted once, split between the sandboxes).

podman gets the same image: pulled from the OCI layout kvmvm imports (with --image, the
same reference). Its two rows alternate, N runs each, after the sandbox figures; podman's
host quirks (benchmarks/containers.py: e.g. a private --root when its default storage is
read-only, as in the test host) are listed under podman_quirks. A podman that is absent or
fails is reported missing with the reason, never as a number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib as bl

bl.use_kvmvm_tree()


def pss_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def busybox_image(work: Path):
    from kvmvm.images.store import ImageStore
    from tests.imagefixtures import BUSYBOX, TAG, _Tar, sh

    layout = work / "oci"
    sh("umoci", "init", "--layout", layout)
    sh("umoci", "new", "--image", f"{layout}:{TAG}")
    t = _Tar(work / "layer.tar")
    for d in ("bin", "etc", "tmp", "root"):
        t.dir(d)
    t.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    for app in sh(BUSYBOX, "--list").stdout.split():
        if app != "busybox":     # the list names busybox itself: a link would replace the binary
            t.symlink(f"bin/{app}", "busybox")
    t.close()
    sh("umoci", "raw", "add-layer", "--image", f"{layout}:{TAG}", work / "layer.tar")
    sh("umoci", "config", "--image", f"{layout}:{TAG}", "--config.env", "PATH=/bin")
    (img,) = ImageStore(root=work / "store").import_(f"oci:{layout}:{TAG}", name="kvmvm-bench:1")
    return img, f"oci:{layout}:{TAG}"


def podman_side_by_side(work: Path, source: str, runs: int) -> dict:
    """`podman run --rm IMG true` and `podman exec CTR true` (CTR: a running container of
    IMG), alternating, `runs` each after one warm-up; ms from spawn to exit."""
    import subprocess

    import containers

    rt = containers.runtimes(str(work), ["podman"], podman_source=source)["podman"]
    if bl.is_missing(rt):
        return {"podman_run_rm_true_ms": rt, "podman_exec_true_ms": rt, "podman_quirks": []}
    try:
        start = rt.cmd(["sleep", "1000000"], detach=True)
        cid = rt.ids[-1]
        p = subprocess.run(start, capture_output=True, text=True, timeout=120)

        def run_rm() -> float:
            return bl.run_timed(rt.cmd(["true"]), timeout=120)[0]

        def exec_() -> float:
            if p.returncode != 0:
                raise RuntimeError(f"podman run -d failed: {p.stderr.strip()[-200:]}")
            return bl.run_timed(rt.exec_cmd(cid, ["true"]), timeout=120)[0]

        rows = bl.alternate({"run": run_rm, "exec": exec_}, runs, warmup=1)
    finally:
        rt.cleanup()
    return {"podman_run_rm_true_ms": rows["run"], "podman_exec_true_ms": rows["exec"],
            "podman_quirks": rt.quirks}


def ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--idle", type=int, default=4)
    ap.add_argument("--commands", type=int, default=200)
    ap.add_argument("--memory", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kvmvm-bench-sandbox-"))
    try:
        return measure(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(a: argparse.Namespace, work: Path) -> int:
    from kvmvm.sandbox import Sandbox
    from kvmvm.sandbox import vm as svm

    # run directories hold Unix sockets: a local directory (KVMVM_HOME may be a 9p share)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(work / "xdg"))
    (work / "xdg").mkdir(exist_ok=True)
    snaps = work / "snapshots"
    svm.snapshot_root = lambda home=None: snaps          # a private warm-snapshot cache
    img, source = (a.image, a.image) if a.image else busybox_image(work)
    out = {"memory_mib": a.memory}

    def first_result(**kw) -> tuple[float, bool]:
        t0 = time.perf_counter()
        sb = Sandbox.create(img, memory_mib=a.memory, **kw)
        sb.commands.run("true")
        t = ms(t0)
        warm = sb.warm
        sb.kill()
        return t, warm

    out["first_create_with_snapshot_ms"], _ = first_result()
    cold = [first_result(warm=False)[0] for _ in range(max(1, a.runs // 2))]
    warm = [first_result()[0] for _ in range(a.runs)]
    out["cold_create_to_first_result_ms"] = {"median": statistics.median(cold), "min": min(cold)}
    out["warm_create_to_first_result_ms"] = {"median": statistics.median(warm), "min": min(warm)}

    # sandboxes created (warm), used once and killed per second: serially, and from 4 threads
    t0 = time.perf_counter()
    for _ in range(a.runs):
        with Sandbox.create(img, memory_mib=a.memory) as sb:
            sb.commands.run("true")
    out["sandboxes_per_s_serial"] = round(a.runs / (time.perf_counter() - t0), 2)

    def lifecycle():
        for _ in range(max(1, a.runs // 2)):
            with Sandbox.create(img, memory_mib=a.memory) as sb:
                sb.commands.run("true")

    t0 = time.perf_counter()
    ts = [threading.Thread(target=lifecycle) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out["sandboxes_per_s_4_threads"] = round(4 * max(1, a.runs // 2) / (time.perf_counter() - t0), 2)

    with Sandbox.create(img, memory_mib=a.memory) as sb:
        sb.commands.run("true")
        rtt = []
        t0 = time.perf_counter()
        for _ in range(a.commands):
            t1 = time.perf_counter()
            sb.commands.run("true")
            rtt.append((time.perf_counter() - t1) * 1000)
        out["commands_per_s_serial"] = round(a.commands / (time.perf_counter() - t0), 1)
        out["command_round_trip_ms"] = bl.summarize(rtt)
        t0 = time.perf_counter()

        def worker():
            for _ in range(a.commands // 4):
                sb.commands.run("true")

        ts = [threading.Thread(target=worker) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        out["commands_per_s_4_threads"] = round(4 * (a.commands // 4) / (time.perf_counter() - t0), 1)

    base = pss_kib()
    boxes = [Sandbox.create(img, memory_mib=a.memory) for _ in range(a.idle)]
    for sb in boxes:
        sb.commands.run("true")
    time.sleep(1)
    out["pss_per_idle_sandbox_mib"] = round((pss_kib() - base) / 1024 / a.idle, 1)
    out["idle_sandboxes"] = a.idle
    for sb in boxes:
        sb.kill()

    out.update(podman_side_by_side(work / "podman", source, a.runs))
    # side by side: a sandbox created, used once, killed vs a container run once and removed;
    # one command in a running sandbox vs podman exec into a running container
    out["ratio_warm_first_result_to_podman_run"] = bl.ratio(out["warm_create_to_first_result_ms"],
                                                            out["podman_run_rm_true_ms"])
    out["ratio_command_to_podman_exec"] = bl.ratio(out["command_round_trip_ms"], out["podman_exec_true_ms"])
    out["grade"] = ("nested, software-emulated SVM for the VMs; podman natively in the test host"
                    if os.environ.get("KVMHOST_INSIDE") else "hardware KVM")

    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            if isinstance(v, dict) and ("n" in v or bl.is_missing(v)):     # summarize()'s, or missing
                v = bl.fmt_entry(v)
            print(f"{k:36} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
