"""The linux tier's per-test progress across test-host attempts (scripts/test.sh).

Each attempt's pytest writes ``build/test-reports/linux-progress-attemptN.txt``: one line
``<outcome> <nodeid>`` per finished test (tests/conftest.py), outcome one of passed, failed,
skipped, or shutdown: failed because a guest crashed, with KVM_EXIT_SHUTDOWN (a triple fault)
or a kernel panic (pvpanic), which the software-emulated test host causes now and then (see README.md, Tests). A fresh L1
runs what is left: the tests that had not finished (the L1 froze or its kernel died), and once
more each test whose only failure so far was a shutdown, or a failure in an attempt whose
test host then froze (scripts/test.sh marks such an attempt with
``linux-progress-attemptN.txt.froze``: an emulated L1 on its way to a freeze runs its guests
slower and slower, and a test can time out in it before the heartbeat stops). Every other
finished test counts once, as it ended; every rerun is named in the counts' report. A test that triple-faulted and then failed in another phase too (its
teardown found something left behind, say) is recorded failed and not run again: what it
left is a failure of its own, whatever the test host did.

``python -m tests.kvmhost.progress deselect|rerun|count DIR``: the pytest ``--deselect``
arguments of the finished tests (one per line); the tests to run again after a shutdown; the
final counts ``passed failed skipped``, with one line per rerun on stderr.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

FINAL = ("passed", "failed", "skipped")
FROZE_FAILED = "failed-before-freeze"   # failed in an attempt whose test host then froze
AGAIN = ("shutdown", FROZE_FAILED)      # run once more


def outcomes(reports: Path) -> dict[str, list[str]]:
    """Each test's outcomes, attempt by attempt."""
    out: dict[str, list[str]] = {}
    files = sorted(reports.glob("linux-progress-attempt*.txt"),
                   key=lambda f: int(re.sub(r"\D", "", f.stem) or 0))
    for f in files:
        froze = f.with_name(f.name + ".froze").exists()
        for line in f.read_text(errors="replace").splitlines():
            outcome, _, nodeid = line.partition(" ")
            if nodeid:
                out.setdefault(nodeid, []).append(FROZE_FAILED if froze and outcome == "failed" else outcome)
    return out


def rerun(o: dict[str, list[str]]) -> list[str]:
    """Tests whose guest shut down, or that failed before the test host froze, once, and
    that have not run again since."""
    return [n for n, seen in o.items() if seen[-1] in AGAIN and sum(seen.count(a) for a in AGAIN) == 1]


def finished(o: dict[str, list[str]]) -> list[str]:
    """Tests that are not to run again."""
    again = set(rerun(o))
    return [n for n in o if n not in again]


def final(seen: list[str]) -> str:
    last = seen[-1]
    return last if last in FINAL else "failed"


def count(o: dict[str, list[str]]) -> tuple[int, int, int]:
    c = {k: 0 for k in FINAL}
    for seen in o.values():
        c[final(seen)] += 1
    return c["passed"], c["failed"], c["skipped"]


REASON_LINES = 40           # of pytest's "E " lines, so that a CI log alone tells why


def reason(reports: Path, nodeid: str) -> str:
    """The last line of a test's last failure report (the conftest keeps them beside the
    progress files, as ``.failures``), which file holds it all, and then the report's
    error lines (pytest's ``E`` lines: the assertion and its message), at most
    REASON_LINES of them: the CI log is often all there is to read."""
    for f in sorted(reports.glob("linux-progress-attempt*.txt.failures"),
                    key=lambda f: -int(re.sub(r"\D", "", f.name) or 0)):
        blocks = f.read_text(errors="replace").split("==== ")
        for b in reversed(blocks):
            head, _, body = b.partition("\n")
            if head.split(" ", 1)[-1] == nodeid:
                lines = [ln for ln in body.splitlines() if ln.strip()]
                out = f"{lines[-1].strip() if lines else '?'} (all of it: {f})"
                errors = [ln for ln in lines if ln.startswith("E ")]
                if len(errors) > 1 or (errors and errors[0].strip() != lines[-1].strip()):
                    more = len(errors) - REASON_LINES
                    out += "".join(f"\n    {ln}" for ln in errors[:REASON_LINES])
                    if more > 0:
                        out += f"\n    ({more} more lines in that file)"
                return out
    return "no details kept"


def main(argv: list[str]) -> int:
    what, reports = argv[0], Path(argv[1])
    o = outcomes(reports)
    if what in ("deselect", "rerun"):   # one per line; nothing at all for none
        for n in finished(o) if what == "deselect" else rerun(o):
            print(n)
    elif what == "count":
        for n, seen in o.items():
            if "shutdown" in seen:
                sys.stderr.write(f"test.sh: {n}: a guest crashed (triple fault or kernel panic) in the test host; "
                                 f"outcomes by attempt: {', '.join(seen)} (counts as {final(seen)})\n")
            elif FROZE_FAILED in seen:
                sys.stderr.write(f"test.sh: {n}: failed in an attempt whose test host then froze, so it ran "
                                 f"once more; outcomes by attempt: {', '.join(seen)} (counts as {final(seen)})\n")
                if final(seen) == "failed":
                    sys.stderr.write(f"test.sh: {n} failed: {reason(reports, n)}\n")
            elif final(seen) == "failed":
                sys.stderr.write(f"test.sh: {n} failed: {reason(reports, n)}\n")
        print(*count(o))
    else:
        sys.stderr.write(f"unknown command {what}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
