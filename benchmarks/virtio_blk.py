"""virtio-blk: the same tiny-guest driver (guest-images/tiny/programs/virtio-blk-bench.c)
under kvmvm and under QEMU microvm (virtio-blk-device, modern virtio-mmio) on the same raw
image; alternating runs. The guest times its request loop with the TSC, so VM start-up is
not counted. Reports requests/s and MB/s per runtime and the kvmvm/QEMU ratio.

    .venv/bin/python benchmarks/virtio_blk.py [--runs 5] [--count 2000] [--size 4096] [--write] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

LINE = re.compile(r"bench: (\d+) requests (\d+) bytes (\d+)")


def tsc_hz() -> float:
    """The TSC rate, from /proc/cpuinfo's nominal MHz (absolute numbers only; ratios need none)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1]) * 1e6
    return 1e9


def run_once(cmd: list[str]) -> tuple[int, int, int] | str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    m = LINE.search(p.stdout)
    if not m:
        return f"no result (status {p.returncode}): {(p.stdout + p.stderr).strip()[-200:]}"
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    hz = tsc_hz()
    args = f"count={a.count} size={a.size}" + (" write" if a.write else "")
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "bench.img"
        img.write_bytes(bytes(64 << 20))
        cmds = {
            "kvmvm": benchlib.kvmvm_cmd(benchlib.guest("virtio-blk-bench"), args) +
                     ["--drive", str(img), "--no-rng"],
            "qemu": benchlib.qemu_cmd(benchlib.guest("virtio-blk-bench"), args) +
                    ["-global", "virtio-mmio.force-legacy=false",
                     "-drive", f"id=d0,file={img},format=raw,if=none,cache=none,aio=threads",
                     "-device", "virtio-blk-device,drive=d0"],
        }
        if not benchlib.qemu_bin():
            del cmds["qemu"]
        samples: dict[str, list[float]] = {k: [] for k in cmds}
        errors: dict[str, str] = {}
        for _ in range(a.runs):
            for name, cmd in cmds.items():   # alternate runtimes every round
                r = run_once(cmd)
                if isinstance(r, str):
                    errors[name] = r
                    continue
                n, size, ticks = r
                samples[name].append(n / (ticks / hz))
    result = {"benchmark": "virtio_blk", "op": "write" if a.write else "read", "count": a.count,
              "size": a.size, "tsc_hz": hz, "runtimes": {}}
    for name in cmds:
        if not samples[name]:
            result["runtimes"][name] = benchlib.missing(errors.get(name, "no samples"))
            continue
        med = statistics.median(samples[name])
        result["runtimes"][name] = {"requests_per_s": round(med), "mb_per_s": round(med * a.size / 1e6, 2),
                                    "samples": [round(x) for x in samples[name]]}
    k, q = result["runtimes"].get("kvmvm"), result["runtimes"].get("qemu")
    if k and q and "requests_per_s" in k and "requests_per_s" in q:
        result["ratio_kvmvm_over_qemu"] = round(k["requests_per_s"] / q["requests_per_s"], 3)
    if a.json:
        print(json.dumps(result))
    else:
        for name, e in result["runtimes"].items():
            print(f"{name:6} " + (f"{e['requests_per_s']} req/s  {e['mb_per_s']} MB/s  samples {e['samples']}"
                                 if "requests_per_s" in e else str(e)))
        if "ratio_kvmvm_over_qemu" in result:
            print(f"ratio kvmvm/QEMU: {result['ratio_kvmvm_over_qemu']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
