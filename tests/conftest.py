"""Test tiers.

- ``host``: everything outside tests/linux/. Tiny guests, which any /dev/kvm runs (PVM too).
- ``linux``: tests under tests/linux/, which boot Linux guests and so need a standard KVM.

On a machine whose /dev/kvm is PVM (kvmvm's development and CI machines), the linux tier
runs inside the kvmhost L1: ``scripts/test.sh`` does that, or by hand
``python -m tests.kvmhost run -- .venv/bin/python -m pytest -m linux tests/linux``.
A linux test that cannot run errors (never silently skips) on a PVM host, or anywhere when
``--require-linux-kvm``, ``KVMVM_REQUIRE_LINUX_KVM=1`` or ``CI=true`` is set; otherwise (no
/dev/kvm at all) it is skipped with the reason. Host-tier tests need a usable /dev/kvm and
fail without one (the ``kvm_ok`` fixture), in CI and everywhere else.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINUX_DIR = ROOT / "tests" / "linux"
if str(ROOT) not in sys.path:  # `import tests.kvmhost` also when started as `pytest`, not `python -m pytest`
    sys.path.insert(0, str(ROOT))

HOW = "run the linux tier with scripts/test.sh, or python -m tests.kvmhost run -- .venv/bin/python -m pytest -m linux tests/linux"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--require-linux-kvm", action="store_true", default=False,
                     help="linux-tier tests error (not skip) when no Linux-capable /dev/kvm is present")


def linux_kvm_problem() -> str | None:
    """Why the local /dev/kvm cannot run Linux guests, or None when it can."""
    if os.path.exists("/sys/module/kvm_pvm"):
        return "local /dev/kvm is the PVM hypervisor, which cannot boot stock Linux guests"
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm on this machine"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user"
    return None


def _require_linux(config: pytest.Config) -> bool:
    return bool(config.getoption("--require-linux-kvm")) or _truthy("KVMVM_REQUIRE_LINUX_KVM") or _truthy("CI")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path)).resolve()
        item.add_marker(pytest.mark.linux if LINUX_DIR in path.parents else pytest.mark.host)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("linux") is None:
        return
    problem = linux_kvm_problem()
    if problem is None:
        return
    if os.path.exists("/sys/module/kvm_pvm") or _require_linux(item.config):
        pytest.fail(f"linux tier cannot run here: {problem}; {HOW}", pytrace=False)
    pytest.skip(f"{problem}; {HOW}")


# KVMVM_TEST_PROGRESS=FILE: one line "<outcome> <nodeid>" per finished test, written and
# fsynced as each test ends (tests/kvmhost/progress.py). scripts/test.sh reads it when the
# test host froze mid-run: the next attempt runs only the tests that had not finished (a
# JUnit report is written only at the end, so a killed run leaves none).
_PROGRESS = os.environ.get("KVMVM_TEST_PROGRESS")
GUEST_CRASHED = ("triple-faulted (KVM_EXIT_SHUTDOWN)", "guest kernel panicked (pvpanic)")
_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not _PROGRESS:
        return
    prev = _outcomes.get(report.nodeid, "passed")
    if report.failed:
        # a guest that crashed, by a triple fault (KVM_EXIT_SHUTDOWN) or a kernel panic: the
        # emulated test host causes them now and then; test.sh runs such a test once more
        # (tests/kvmhost/progress.py)
        shutdown = any(m in str(report.longrepr) for m in GUEST_CRASHED)
        _outcomes[report.nodeid] = "shutdown" if shutdown and prev != "failed" else "failed"
        # why, kept even when the run is killed before pytest's own report
        _append(_PROGRESS + ".failures", f"==== {report.when} {report.nodeid}\n{report.longrepr}\n")
    elif report.skipped and prev != "failed":
        _outcomes[report.nodeid] = "skipped"
    else:
        _outcomes.setdefault(report.nodeid, "passed")
    if report.when == "teardown":
        _append(_PROGRESS, f"{_outcomes.pop(report.nodeid)} {report.nodeid}\n")


def _append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode(errors="replace"))
        os.fsync(fd)
    finally:
        os.close(fd)
