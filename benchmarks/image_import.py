"""`kvmvm image import` of a ~100 MB image against `podman load` of the same docker-archive.

The image is built offline: two layers (Python's standard library and Perl's, then
/usr/share/doc) assembled by umoci and saved by skopeo as a docker-archive. Runs alternate
between the two tools; each kvmvm run imports into an empty KVMVM_HOME (verification,
layer application and the EROFS build included), and each podman run loads into podman's
storage and removes the image afterwards.

    .venv/bin/python benchmarks/image_import.py [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KVMVM = os.environ.get("KVMVM_BIN", str(ROOT / ".venv" / "bin" / "kvmvm"))
SOURCES = [["/usr/lib/python3.11", "/usr/share/perl"], ["/usr/share/doc"]]
NAME = "localhost/kvmvm-bench-import:1"


def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw)


def build(work: Path) -> Path:
    layout = work / "oci"
    sh("umoci", "init", "--layout", layout)
    sh("umoci", "new", "--image", f"{layout}:1")
    for i, dirs in enumerate(SOURCES):
        tar = work / f"l{i}.tar"
        with tarfile.open(tar, "w") as tf:
            for d in dirs:
                if os.path.isdir(d):
                    tf.add(d, d.lstrip("/"))
        sh("umoci", "raw", "add-layer", "--image", f"{layout}:1", tar)
        tar.unlink()
    out = work / "image.tar"
    sh("skopeo", "copy", "--quiet", f"oci:{layout}:1", f"docker-archive:{out}:{NAME}")
    shutil.rmtree(layout)
    return out


def kvmvm_import(archive: Path, work: Path) -> float:
    home = Path(tempfile.mkdtemp(dir=work, prefix="home-"))
    t = time.monotonic()
    sh(KVMVM, "image", "import", "--quiet", archive, env=dict(os.environ, KVMVM_HOME=str(home)))
    dt = time.monotonic() - t
    shutil.rmtree(home)
    return dt


def podman_load(archive: Path) -> float:
    t = time.monotonic()
    sh("podman", "load", "-q", "-i", archive)
    dt = time.monotonic() - t
    subprocess.run(["podman", "rmi", "-f", NAME], capture_output=True)
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvmvm-bench-import-") as tmp:
        work = Path(tmp)
        archive = build(work)
        size = archive.stat().st_size
        k, p = [], []
        for _ in range(a.runs):
            k.append(kvmvm_import(archive, work))
            p.append(podman_load(archive))
    res = {"archive_bytes": size, "runs": a.runs, "load": os.getloadavg()[0],
           "kvmvm_import_s": {"min": min(k), "median": statistics.median(k), "all": k},
           "podman_load_s": {"min": min(p), "median": statistics.median(p), "all": p},
           "ratio_median": statistics.median(k) / statistics.median(p)}
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"archive {size / 1e6:.0f} MB, {a.runs} runs each, load {res['load']:.1f}")
        print(f"kvmvm image import  median {res['kvmvm_import_s']['median']:.2f} s  min {min(k):.2f} s")
        print(f"podman load         median {res['podman_load_s']['median']:.2f} s  min {min(p):.2f} s")
        print(f"ratio kvmvm/podman  {res['ratio_median']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
