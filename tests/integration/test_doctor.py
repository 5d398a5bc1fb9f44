"""`kvmvm --version` and `kvmvm doctor`: what they report matches the host, checked here
independently; missing tools and a missing /dev/kvm give `missing` / `fail` lines with a fix."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from kvmvm.doctor import TOOLS

from .conftest import ROOT, kvmvm


def doctor(*args, env=None):
    r = kvmvm("doctor", *args, env=env, timeout=120)
    return r, (json.loads(r.out) if "--json" in args else None)


def test_version_names_the_c_core_build_of_these_sources():
    from kvmvm.native.build import build_id, compiler_version

    r = kvmvm("--version")
    assert r.status == 0 and r.err == ""
    m = re.fullmatch(r"kvmvm (\S+) \(C core build ([0-9a-f]{12}), (.+)\)\n", r.out)
    assert m, r.out
    from kvmvm import __version__

    cc = compiler_version()
    assert m.group(1) == __version__ and m.group(3) == cc
    assert m.group(2) == build_id(cc), ("the C core was built from other sources than these: "
                                        "rebuild it (./dev setup)")


def test_doctor_json_matches_the_host(tmp_path, kvm_ok):
    env = dict(os.environ, KVMVM_HOME=str(tmp_path / "home"))
    r, doc = doctor("--json", env=env)
    assert r.status == 0, r.err
    checks = {c["name"]: c for c in doc["checks"]}
    assert doc["ok"] is True and all(c["status"] in ("ok", "warn", "missing") for c in checks.values())
    assert checks["/dev/kvm"]["status"] == "ok" and checks["VM creation"]["status"] == "ok"
    assert "API 12" in checks["KVM API"]["detail"] and "irqchip" in checks["KVM API"]["detail"]
    pvm = os.path.exists("/sys/module/kvm_pvm")
    assert ("PVM" in checks["KVM kind"]["detail"]) == pvm
    assert checks["KVM kind"]["status"] == ("warn" if pvm else "ok")
    assert checks["TUN"]["status"] == ("ok" if os.access("/dev/net/tun", os.R_OK | os.W_OK) else "missing")
    for feature, tools in TOOLS.items():
        have = all(shutil.which(t) for t, _ in tools)
        assert checks[feature]["status"] == ("ok" if have else "missing"), checks[feature]
    assert checks["guest kernel"]["status"] == "missing"          # an empty cache
    assert "kvmvm kernel build" in checks["guest kernel"]["fix"]
    assert checks["tiny guests"]["status"] == "ok" and checks["C core"]["status"] == "ok"


def test_doctor_names_missing_tools_and_how_to_get_them(tmp_path, kvm_ok):
    empty = tmp_path / "bin"
    empty.mkdir()
    p = subprocess.run([sys.executable, "-m", "kvmvm", "doctor"], capture_output=True, text=True,
                       env=dict(os.environ, PATH=str(empty), KVMVM_HOME=str(tmp_path / "home")), cwd=ROOT,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert all(re.match(r"(ok|warn|missing|fail) +\S|\s+fix: ", ln) for ln in lines), p.stdout
    text = p.stdout
    assert re.search(r"^missing +benchmarks +not found: qemu-system-x86_64$", text, re.M)
    assert "fix: `sudo apt-get install podman skopeo umoci erofs-utils e2fsprogs`" in text
    assert re.search(r"^missing +kernel build tools +not installed: .*\bgcc\b.*\bmake\b", text, re.M)


def test_doctor_without_kvm_fails_with_a_fix(tmp_path):
    r, doc = doctor("--json", "--kvm", str(tmp_path / "kvm"))
    assert r.status == 1
    c = next(c for c in doc["checks"] if c["name"] == "/dev/kvm")
    assert doc["ok"] is False and c["status"] == "fail" and "modprobe" in c["fix"]
    r, _ = doctor("--kvm", str(tmp_path / "kvm"))
    assert r.status == 1 and re.search(r"^fail +/dev/kvm +.*does not exist$", r.out, re.M)
