"""kvmvm as a new user gets it: the wheel and the sdist, each installed into a fresh venv
outside the checkout, and run from there (`--help`, `--version`, a tiny guest).

Offline and cheap: both builds use the project venv's setuptools/cffi/wheel
(--no-build-isolation) and run side by side; the fresh venvs get kvmvm's dependencies
(read from the wheel's own Requires-Dist, recursively) as symlinks to the project venv's
copies, never kvmvm itself, so a dependency missing from the metadata fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
BUILD_PRODUCTS = re.compile(r"(__pycache__|\.py[cod]$|\.so$|\.o$|^kvmvm/_native\.c$)")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def _requirements(reqs) -> list[str]:
    """Distribution names from Requires-Dist lines, leaving out extras-only ones."""
    out = []
    for r in reqs or []:
        name, _, marker = r.partition(";")
        if "extra" in marker:
            continue
        out.append(re.match(r"\s*([A-Za-z0-9._-]+)", name).group(1))
    return out


def _link_deps(wheel: Path, into: Path) -> None:
    """Symlink kvmvm's dependencies (recursively) from this venv into `into`."""
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    todo = _requirements(re.findall(r"^Requires-Dist: (.+)$", meta, re.M))
    assert todo, "the wheel declares no dependencies"
    into.mkdir()
    seen = set()
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a conditional dependency this interpreter does not need
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
            if not (into / top).exists():
                (into / top).symlink_to(dist.locate_file(top))
        todo += _requirements(dist.requires)


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """The sdist and two wheels: "wheel" built from the checkout, "sdist-wheel" by pip from
    the sdist."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-c", f"from setuptools import build_meta as b; b.build_sdist({str(out)!r})"],
         cwd=ROOT)
    sdist = next(out.glob("kvmvm-*.tar.gz"))
    builds = {}
    for kind, src in (("wheel", ROOT), ("sdist-wheel", sdist)):
        (out / kind).mkdir()
        cmd = [*PIP, "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-w", str(out / kind), str(src)]
        builds[kind] = (cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                              text=True, cwd=out))
    for kind, (cmd, p) in builds.items():
        log = p.communicate(timeout=600)[0]
        assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{log}"
    return {"sdist": sdist, **{k: next((out / k).glob("kvmvm-*.whl")) for k in builds}}


@pytest.fixture(scope="module")
def venvs(dists, tmp_path_factory) -> dict[str, Path]:
    """A fresh venv per build, outside the checkout, with kvmvm installed by pip."""
    base = tmp_path_factory.mktemp("venvs")
    deps = base / "deps"
    _link_deps(dists["wheel"], deps)
    out = {}
    for kind in ("wheel", "sdist"):
        v = base / kind
        _run([sys.executable, "-m", "venv", "--without-pip", str(v)])
        site = Path(_run([str(v / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
                         ).stdout.strip())
        (site / "kvmvm-test-deps.pth").write_text(f"{deps}\n")
        whl = dists["wheel" if kind == "wheel" else "sdist-wheel"]
        _run([*PIP, "--python", str(v / "bin" / "python"), "install", "--no-deps", "--no-index", str(whl)])
        out[kind] = v
    return out


def test_wheel_holds_every_file_of_the_package(dists):
    """Packages are found and package data included without a hand-kept list: every
    source file under kvmvm/ is in the wheel, plus the built C core and tiny guests."""
    with zipfile.ZipFile(dists["wheel"]) as z:
        names = set(z.namelist())
    tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "kvmvm").rglob("*") if p.is_file()}
    missing = sorted(n for n in tree if not BUILD_PRODUCTS.search(n) and n not in names)
    assert not missing, f"not in the wheel: {missing}"
    assert any(re.match(r"kvmvm/_native\..*so$", n) for n in names)
    assert "kvmvm/tiny/elf/hello.elf" in names and "kvmvm/image/microvm-6.1.config" in names
    with tarfile.open(dists["sdist"]) as t:
        sd = {n.split("/", 1)[-1] for n in t.getnames()}
    assert "guest-images/tiny/Makefile" in sd and not any("/out/" in n for n in sd)
    assert not [n for n in tree if not BUILD_PRODUCTS.search(n) and n not in sd]


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_installed_kvmvm_runs_outside_the_checkout(venvs, kind, tmp_path, kvm_ok):
    v = venvs[kind]
    exe = str(v / "bin" / "kvmvm")
    env = {k: val for k, val in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{v / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"
    env["KVMVM_HOME"] = str(tmp_path / "home")

    def run(*args, rc=0):
        p = subprocess.run([exe, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
        assert p.returncode == rc, f"kvmvm {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
        return p

    where = subprocess.run([str(v / "bin" / "python"), "-c", "import kvmvm, kvmvm._native; print(kvmvm.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env)
    assert where.stdout.startswith(str(v)), f"kvmvm imported from {where.stdout}{where.stderr}"

    assert "boot" in run("--help").stdout
    fc = v / "bin" / "kvmvm-firecracker"       # a plain script: pip's wrappers import re
    assert "import re" not in fc.read_text()
    p = subprocess.run([str(fc), "--version"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("kvmvm 0.1.0 (Firecracker API v"), p.stderr
    assert re.match(r"kvmvm 0\.1\.0 \(C core build [0-9a-f]{12}, ", run("--version").stdout)
    doc = json.loads(run("doctor", "--json").stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert doc["ok"] and checks["C core"]["status"] == "ok" and str(v) in checks["tiny guests"]["detail"]
    hello = run("guests", "hello").stdout.strip()
    assert hello.startswith(str(v)) and hello.endswith("hello.elf")
    p = run("boot", "--kernel", hello)
    assert "Hello from kvmvm tiny guest" in p.stdout
    exitcode = run("guests", "exitcode").stdout.strip()
    run("boot", "--kernel", exitcode, "--cmdline", "3", rc=7)
    kl = json.loads(run("kernel", "list", "--json").stdout)
    assert kl["home"] == env["KVMVM_HOME"] and kl["vmlinux"] is None
    # package data the kernel build reads
    data = subprocess.run([str(v / "bin" / "python"), "-c",
                           "from kvmvm.image import kernel, initramfs; "
                           "print(len(kernel.fragment_text()), len(initramfs.init_text()))"],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert data.returncode == 0 and all(int(n) > 0 for n in data.stdout.split()), data.stderr
