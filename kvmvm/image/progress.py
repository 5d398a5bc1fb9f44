"""How long builds report what they are doing: a small interface, a plain-lines
implementation for logs and pipes, and a silent one. The CLI adds a rich one."""

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
