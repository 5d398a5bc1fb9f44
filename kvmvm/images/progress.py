"""What an import reports while it works. The CLI shows it as a rich progress display on a
terminal and as plain lines otherwise; library callers get silence by default."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class ImportProgress:
    """Receives an import's phases; every method does nothing here."""

    def phase(self, name: str, total: Optional[int] = None) -> None:
        """A new phase starts; `total` is its size in bytes when known."""

    def advance(self, n: int) -> None:
        """`n` more bytes of the current phase are done."""

    def step(self, line: str) -> None:
        """One unit of the current phase finished (e.g. one layer verified)."""

    def note(self, line: str) -> None:
        """A line worth showing as is."""


class PlainImportProgress(ImportProgress):
    """One line per phase and per step, with the time since the start."""

    def __init__(self, stream: Optional[TextIO] = None, prefix: str = "kvmvm image"):
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.t0 = time.monotonic()

    def _print(self, msg: str) -> None:
        print(f"{self.prefix}: [{time.monotonic() - self.t0:5.1f}s] {msg}", file=self.stream, flush=True)

    def phase(self, name, total=None):
        self._print(name)

    def step(self, line):
        self._print(f"  {line}")

    def note(self, line):
        self._print(line)
