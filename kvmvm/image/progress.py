"""How long builds report what they are doing: a small interface, a plain-lines
implementation for logs and pipes, and a silent one; and the rich live display that the
CLI's long jobs (`kvmvm kernel build`, `kvmvm image import`) show on a terminal."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    """Receives a build's phases and output lines. The default does nothing."""

    def phase(self, name: str, total: Optional[int] = None) -> None:
        """A new phase starts; `total` is the expected number of steps if known."""

    def step(self, line: str) -> None:
        """One step of the current phase finished (e.g. one `CC` line of make)."""

    def note(self, line: str) -> None:
        """A line worth showing as is (a warning, a cache hit, an install)."""

    def done(self, summary: str) -> None:
        """The whole job finished."""


class PlainProgress(Progress):
    """One line per phase, a line every `every` steps, timestamps relative to start."""

    def __init__(self, stream: TextIO = None, every: int = 200, prefix: str = "kvmvm kernel"):
        self.stream = stream or sys.stderr
        self.every = every
        self.prefix = prefix
        self.t0 = time.monotonic()
        self.steps = 0
        self.total: Optional[int] = None

    def _print(self, msg: str) -> None:
        print(f"{self.prefix}: [{time.monotonic() - self.t0:6.1f}s] {msg}", file=self.stream, flush=True)

    def phase(self, name, total=None):
        self.steps, self.total = 0, total
        self._print(name)

    def step(self, line):
        self.steps += 1
        if self.every and self.steps % self.every == 0:
            of = f"/~{self.total}" if self.total else ""
            self._print(f"  {self.steps}{of} {line.strip()}")

    def note(self, line):
        self._print(line)

    def done(self, summary):
        self._print(summary)


class Scoped:
    """A progress that is also a context manager doing nothing (plain or silent ones)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class RichPhases:
    """One live line (spinner, phase, a bar when the phase has a size, the `columns` rich
    TextColumn formats, elapsed time, then `trailing` formats); each finished phase leaves a
    check-marked line with its duration above it. `field` is the task's one custom field
    (empty at each phase), `prefix` starts note lines; `console` is a rich Console (default:
    stderr). A context manager: the display runs inside the with block. Loads rich on first
    use (it is not on `kvmvm boot`'s path)."""

    def __init__(self, prefix: str, field: str, columns: tuple[str, ...] = (),
                 trailing: tuple[str, ...] = (), console=None):
        from rich.console import Console
        from rich.progress import BarColumn, Progress as Bar, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.prefix, self.field = prefix, field
        self.console = console or Console(stderr=True, highlight=False)
        self.bar = Bar(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                       *(TextColumn(c) for c in columns), TimeElapsedColumn(),
                       *(TextColumn(c) for c in trailing), console=self.console,
                       transient=True, refresh_per_second=8)
        self.task = None
        self.name: Optional[str] = None
        self.t0 = 0.0

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self._finish()
        self.bar.stop()

    def _finish(self) -> None:
        if self.name is not None:
            self.console.print(f"[green]✓[/] {self.name} [dim]({time.monotonic() - self.t0:.1f}s)")
            self.name = None

    def phase(self, name, total=None):
        self._finish()
        self.name, self.t0 = name, time.monotonic()
        if self.task is None:
            self.task = self.bar.add_task(name, total=total, **{self.field: ""})
        else:
            self.bar.reset(self.task, total=total, description=name, **{self.field: ""})

    def note(self, line):
        self.console.print(f"{self.prefix}: {line}", soft_wrap=True)
