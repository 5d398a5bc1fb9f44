"""The rich progress displays of `kvmvm kernel build` and `kvmvm image import` (one shared
helper, kvmvm.image.progress.RichPhases), rendered to a terminal-like rich Console."""
from __future__ import annotations

import io
import re

from rich.console import Console

from kvmvm.cli.images import RichImportProgress, _Plain as ImagePlain, _Quiet, progress_for
from kvmvm.cli.kernel import RichProgress, _Plain as KernelPlain

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def render(cls, drive) -> list[str]:
    buf = io.StringIO()
    p = cls(console=Console(file=buf, force_terminal=True, width=120, highlight=False))
    with p:
        drive(p)
    text = ANSI.sub("", buf.getvalue()).replace("\r", "\n")
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_image_import_display():
    def drive(p):
        p.phase("reading archive", total=4_000_000)
        p.advance(1_000_000)
        assert p.bar.tasks[0].fields["sizes"] == "1 MB/4 MB"
        p.step("layer sha256:abc verified")
        p.note("tagged busybox:latest")
        p.phase("unpacking")
        assert p.bar.tasks[0].fields["sizes"] == ""     # each phase starts its field afresh
    lines = render(RichImportProgress, drive)
    assert "✓ layer sha256:abc verified" in lines
    assert "kvmvm image: tagged busybox:latest" in lines
    done = [x for x in lines if re.fullmatch(r"✓ (reading archive|unpacking) \(\d+\.\ds\)", x)]
    assert [x.split(" (")[0] for x in done] == ["✓ reading archive", "✓ unpacking"]


def test_kernel_build_display():
    def drive(p):
        p.phase("compiling", total=2)
        p.step("  CC      kernel/fork.o\n")
        assert p.bar.tasks[0].fields["last"] == "CC      kernel/fork.o"
        p.step("  CC      mm/mmap.o")
        assert p.bar.tasks[0].total == 2 * 1.1 // 1     # a low estimate keeps the bar short of full
        p.note("cache hit")
        p.done("built in 1 s")
    lines = render(RichProgress, drive)
    assert "kvmvm kernel: cache hit" in lines
    assert "built in 1 s" in lines
    assert [x for x in lines if x.startswith("✓ compiling (")], lines


def test_a_failed_job_leaves_its_phase_unmarked():
    buf = io.StringIO()
    p = RichProgress(console=Console(file=buf, force_terminal=True, width=120))
    try:
        with p:
            p.phase("compiling")
            raise RuntimeError("make failed")
    except RuntimeError:
        pass
    assert "✓" not in ANSI.sub("", buf.getvalue())


def test_plain_and_quiet_are_context_managers(capsys):
    with progress_for(plain=True, quiet=False) as q:
        assert isinstance(q, ImagePlain)
        q.note("plain line")
    with progress_for(plain=False, quiet=True) as q:
        assert isinstance(q, _Quiet)
        q.note("not shown")
    with KernelPlain() as k:
        k.done("kernel done")
    err = capsys.readouterr().err
    assert "kvmvm image: [" in err and "plain line" in err and "not shown" not in err
    assert re.search(r"kvmvm kernel: \[ +\d+\.\ds\] kernel done", err)
