"""virtio-blk: the same tiny-guest driver (guest-images/tiny/programs/virtio-blk-bench.c)
under kvmvm and under QEMU microvm (virtio-blk-device, modern virtio-mmio) on the same raw
image; alternating runs after one warm-up round. The guest times its request loop with the
TSC (converted with the TSC's measured rate), so VM start-up is not counted. Reports
requests/s and MB/s per runtime (median, min, max of every run), each failed run with its
reason, and the kvmvm/QEMU ratio.

Same caching on both sides, two ways:
- default: the host page cache, with guest flushes honoured (kvmvm: buffered I/O and
  fdatasync on FLUSH; QEMU: cache=writeback, which does the same);
- --direct: O_DIRECT on both (kvmvm: `--drive PATH,direct`; QEMU: cache=none, i.e.
  cache.direct=on with flushes honoured). Both do the I/O from threads (QEMU aio=threads,
  kvmvm's device worker), so only the caching differs from the default row. The image then
  lives in /var/tmp (or --dir): O_DIRECT on tmpfs is refused before Linux 6.6 and
  meaningless after. The guest's buffers are page-aligned, so kvmvm's requests go straight
  between guest RAM and the file (no bounce buffer).

    .venv/bin/python benchmarks/virtio_blk.py [--runs 10] [--count 2000] [--size 4096] [--write]
                                              [--direct] [--dir DIR] [--json]
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
    """The TSC's real rate (measured; see benchlib.tsc_hz)."""
    return benchlib.tsc_hz()


def run_once(cmd: list[str]) -> tuple[int, int, int] | str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    m = LINE.search(p.stdout)
    if not m:
        return f"no result (status {p.returncode}): {(p.stdout + p.stderr).strip()[-200:]}"
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--direct", action="store_true", help="O_DIRECT on both sides")
    ap.add_argument("--dir", help="where the image goes (default: /var/tmp with --direct, else $TMPDIR)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    hz = tsc_hz()
    args = f"count={a.count} size={a.size}" + (" write" if a.write else "")
    with tempfile.TemporaryDirectory(dir=a.dir or ("/var/tmp" if a.direct else None)) as tmp:
        img = Path(tmp) / "bench.img"
        img.write_bytes(bytes(64 << 20))
        cmds = {
            "kvmvm": benchlib.kvmvm_cmd(benchlib.guest("virtio-blk-bench"), args) +
                     ["--drive", f"{img}{',direct' if a.direct else ''}", *benchlib.KVMVM_BARE],
            "qemu": benchlib.qemu_cmd(benchlib.guest("virtio-blk-bench"), args) +
                    ["-global", "virtio-mmio.force-legacy=false",
                     "-drive", f"id=d0,file={img},format=raw,if=none,"
                               f"cache={'none' if a.direct else 'writeback'},aio=threads",
                     "-device", "virtio-blk-device,drive=d0"],
        }
        if not benchlib.qemu_bin():
            del cmds["qemu"]
        samples: dict[str, list[float]] = {k: [] for k in cmds}
        errors: dict[str, list[str]] = {k: [] for k in cmds}
        for i in range(a.runs + 1):
            for name, cmd in cmds.items():   # alternate runtimes every round
                r = run_once(cmd)
                if i == 0:
                    continue                  # warm-up round (page cache, binaries)
                if isinstance(r, str):
                    errors[name].append(r)
                    continue
                n, size, ticks = r
                samples[name].append(n / (ticks / hz))
    result = {"benchmark": "virtio_blk", "op": "write" if a.write else "read", "count": a.count,
              "size": a.size, "tsc_hz": round(hz), "runs": a.runs, "caching": ("O_DIRECT on both (kvmvm ,direct; QEMU cache=none)" if a.direct
                          else "host page cache on both (QEMU cache=writeback)"),
              "commands": {k: " ".join(c) for k, c in cmds.items()}, "runtimes": {}}
    for name in cmds:
        if not samples[name]:
            result["runtimes"][name] = benchlib.missing(errors[name][0] if errors[name] else "no samples")
            continue
        med = statistics.median(samples[name])
        result["runtimes"][name] = {"requests_per_s": round(med), "min": round(min(samples[name])),
                                    "max": round(max(samples[name])), "mb_per_s": round(med * a.size / 1e6, 2),
                                    "samples": [round(x) for x in samples[name]],
                                    "failed_runs": len(errors[name]), "failures": errors[name][:5]}
    k, q = result["runtimes"].get("kvmvm"), result["runtimes"].get("qemu")
    if k and q and "requests_per_s" in k and "requests_per_s" in q:
        result["ratio_kvmvm_over_qemu"] = round(k["requests_per_s"] / q["requests_per_s"], 3)
    if a.json:
        print(json.dumps(result))
    else:
        for name, e in result["runtimes"].items():
            print(f"{name:6} " + (f"{e['requests_per_s']} req/s (min {e['min']}, max {e['max']})  "
                                  f"{e['mb_per_s']} MB/s  failed runs {e['failed_runs']}"
                                  + (f" ({e['failures'][0]})" if e["failures"] else "")
                                  if "requests_per_s" in e else str(e)))
        if "ratio_kvmvm_over_qemu" in result:
            print(f"ratio kvmvm/QEMU: {result['ratio_kvmvm_over_qemu']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
