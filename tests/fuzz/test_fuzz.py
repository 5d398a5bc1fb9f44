"""The fuzz harnesses (scripts/fuzz.sh: libFuzzer over the C core, atheris over the Python
parsers of untrusted input) as tests: every saved input (tests/fuzz/corpus/, crash
regressions and seeds) still passes, and each harness fuzzes for a while without a
sanitizer report or an unexpected exception. KVMVM_FUZZ_SECONDS sets the time per harness (CI: 30 s, else 10 s).
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in (ROOT / "tests" / "fuzz").iterdir()
                   if p.name.startswith("fuzz_") and p.suffix in (".c", ".py"))
SECONDS = int(os.environ.get("KVMVM_FUZZ_SECONDS", "30" if os.environ.get("CI") == "true" else "10"))


def fuzz_sh(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["scripts/fuzz.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def built():
    r = fuzz_sh("build", timeout=600)
    assert r.returncode == 0, f"fuzz harnesses did not build (clang-14, libclang-rt-14-dev, atheris):\n{r.stderr[-3000:]}"


def test_saved_inputs_pass(built):
    r = fuzz_sh("regress", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(re.findall(r"saved inputs pass", r.stdout)) == len(HARNESSES), r.stdout


@pytest.mark.parametrize("name", HARNESSES)
def test_fuzz(built, name):
    r = fuzz_sh("run", "-t", str(SECONDS), name, timeout=SECONDS + 120)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(rf"fuzz {name}: (\d+) runs in \d+ s \(\d+/s\), cov (\d+)", r.stdout)
    assert m and int(m.group(1)) > 100 and int(m.group(2)) > 50, r.stdout + r.stderr
