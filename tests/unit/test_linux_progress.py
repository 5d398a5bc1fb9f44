"""tests/kvmhost/progress.py: what a fresh test-host attempt runs, and the final counts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.kvmhost import progress

ROOT = Path(__file__).resolve().parents[2]


def write(d: Path, n: int, lines: list[str]) -> None:
    (d / f"linux-progress-attempt{n}.txt").write_text("".join(f"{x}\n" for x in lines))


def test_an_attempt_that_ended_leaves_only_the_unfinished_tests(tmp_path):
    write(tmp_path, 1, ["passed t::a", "failed t::b", "skipped t::c"])   # its kernel died in t::d
    o = progress.outcomes(tmp_path)
    assert progress.finished(o) == ["t::a", "t::b", "t::c"]
    assert progress.rerun(o) == []
    write(tmp_path, 2, ["passed t::d"])
    assert progress.count(progress.outcomes(tmp_path)) == (2, 1, 1)  # the failure still counts


def test_a_failure_in_an_attempt_that_then_froze_runs_once_more(tmp_path, capsys):
    write(tmp_path, 1, ["passed t::a", "failed t::b", "skipped t::c"])   # froze during t::d
    (tmp_path / "linux-progress-attempt1.txt.froze").touch()
    o = progress.outcomes(tmp_path)
    assert progress.rerun(o) == ["t::b"]
    assert progress.finished(o) == ["t::a", "t::c"]
    write(tmp_path, 2, ["failed t::b", "passed t::d"])    # attempt 2 froze too, later
    (tmp_path / "linux-progress-attempt2.txt.froze").touch()
    o = progress.outcomes(tmp_path)
    assert progress.rerun(o) == []                 # once more, not twice
    assert progress.count(o) == (2, 1, 1)
    write(tmp_path, 2, ["passed t::b", "passed t::d"])
    assert progress.count(progress.outcomes(tmp_path)) == (3, 0, 1)
    assert progress.main(["count", str(tmp_path)]) == 0
    assert ("test.sh: t::b: failed in an attempt whose test host then froze, so it ran once more; "
            "outcomes by attempt: failed-before-freeze, passed (counts as passed)") in capsys.readouterr().err


def test_a_shutdown_is_run_once_more_and_counts_as_its_last_outcome(tmp_path):
    write(tmp_path, 1, ["shutdown t::a", "passed t::b", "shutdown t::c"])
    o = progress.outcomes(tmp_path)
    assert progress.rerun(o) == ["t::a", "t::c"]
    assert progress.finished(o) == ["t::b"]
    write(tmp_path, 2, ["passed t::a", "shutdown t::c"])
    o = progress.outcomes(tmp_path)
    assert progress.rerun(o) == []                 # t::c shut down twice: not a third time
    assert sorted(progress.finished(o)) == ["t::a", "t::b", "t::c"]
    assert progress.count(o) == (2, 1, 0)


def test_attempts_are_read_in_numeric_order(tmp_path):
    for n in range(1, 12):
        write(tmp_path, n, [f"{'shutdown' if n < 11 else 'passed'} t::a"])
    assert progress.outcomes(tmp_path)["t::a"][-1] == "passed"


def test_the_command_line_test_sh_uses(tmp_path):
    write(tmp_path, 1, ["shutdown t::a[x y]", "passed t::b"])
    run = lambda *a: subprocess.run([sys.executable, "-m", "tests.kvmhost.progress", *a, str(tmp_path)],
                                    cwd=ROOT, capture_output=True, text=True, check=True)
    assert run("rerun").stdout.splitlines() == ["t::a[x y]"]
    write(tmp_path, 2, ["passed t::a[x y]"])
    assert run("rerun").stdout == ""              # none: not even an empty line (test.sh's mapfile)
    write(tmp_path, 2, [])
    assert run("deselect").stdout.splitlines() == ["t::b"]
    r = run("count")
    assert r.stdout.split() == ["1", "1", "0"]
    assert ("t::a[x y]: a guest crashed (triple fault or kernel panic) in the test host; outcomes by attempt: "
            "shutdown (counts as failed)") in r.stderr


def test_tests_conftest_writes_each_outcome_as_the_test_ends(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert 0, 'plain failure'\n"
        "def test_guest(): raise AssertionError('kvmvm: guest triple-faulted (KVM_EXIT_SHUTDOWN) near rip 0xfff0')\n"
        "def test_skip(): pytest.skip('no')\n"
        "def test_panic(): raise AssertionError('kvmvm: the VM ended (guest kernel panicked (pvpanic); see ...)')\n")
    out = tmp_path / "progress.txt"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                        str(tmp_path / "test_x.py")], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "KVMVM_TEST_PROGRESS": str(out)})
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [ln.split(" ", 1)[0] + " " + ln.rsplit("::", 1)[1] for ln in out.read_text().splitlines()]
    assert lines == ["passed test_ok", "failed test_bad", "shutdown test_guest", "skipped test_skip",
                     "shutdown test_panic"]
    failures = Path(f"{out}.failures").read_text()
    assert "plain failure" in failures and "near rip 0xfff0" in failures and "test_ok" not in failures


def test_a_failure_is_named_with_its_reason(tmp_path):
    write(tmp_path, 1, ["failed t::b"])
    (tmp_path / "linux-progress-attempt1.txt.failures").write_text(
        "==== call t::b\nTraceback\nE   AssertionError: the guest said no\n\n")
    assert progress.reason(tmp_path, "t::b") == (
        f"E   AssertionError: the guest said no (all of it: {tmp_path / 'linux-progress-attempt1.txt.failures'})")
    assert progress.reason(tmp_path, "t::zz") == "no details kept"


def test_a_failure_reason_carries_its_error_lines(tmp_path):
    write(tmp_path, 1, ["failed t::b"])
    err = [f"E   stderr line {i}" for i in range(progress.REASON_LINES + 5)]
    (tmp_path / "linux-progress-attempt1.txt.failures").write_text(
        "==== call t::b\n    assert rc == 0, err\nE   AssertionError: [b'kvmvm: why']\n" + "\n".join(err)
        + "\n\ntests/linux/t.py:234: AssertionError\n")
    got = progress.reason(tmp_path, "t::b").splitlines()
    assert got[0].startswith("tests/linux/t.py:234: AssertionError (all of it: ")
    assert got[1] == "    E   AssertionError: [b'kvmvm: why']"
    assert got[2:-1] == [f"    {ln}" for ln in err[:progress.REASON_LINES - 1]]
    assert got[-1] == "    (6 more lines in that file)"
