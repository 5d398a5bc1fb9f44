"""Kconfig fragments: read one, and check that a generated .config honours it.

`make olddefconfig` silently drops a symbol whose dependencies are not met; checking
every line of the fragment afterwards turns that into a loud, named failure.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")

# symbol -> value as written in .config ("y", "64", "\"str\""), or None for "is not set"
Symbols = Dict[str, Optional[str]]


def parse(text: str) -> Symbols:
    """Parse .config / fragment text. Comments other than `# CONFIG_X is not set` are ignored."""
    out: Symbols = {}
    for raw in text.splitlines():
        line = raw.strip()
        m = _SET.match(line)
        if m:
            out[m.group(1)] = m.group(2)
            continue
        m = _UNSET.match(line)
        if m:
            out[m.group(1)] = None
    return out


def verify(wanted: Symbols, got: Symbols) -> List[Tuple[str, Optional[str], Optional[str]]]:
    """Every symbol whose value in `got` differs from `wanted`, as (symbol, wanted, got).
    A wanted `n` ("is not set") is met by the symbol being absent."""
    bad = []
    for sym, want in wanted.items():
        have = got.get(sym)
        if want == "n":
            want = None
        if have != want:
            bad.append((sym, want, have))
    return bad


def describe(bad) -> str:
    """One readable line per mismatch, for an error message."""
    def v(x):
        return "n" if x is None else x
    return ", ".join(f"{s} (wanted {v(w)}, got {v(h)})" for s, w, h in bad)


def verify_files(fragment: Union[str, Path], dotconfig: Union[str, Path]):
    return verify(parse(Path(fragment).read_text()), parse(Path(dotconfig).read_text()))
