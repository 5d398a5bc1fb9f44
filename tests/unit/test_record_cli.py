"""kvmvm.record (the light @dataclass) and the click-free `kvmvm boot` argument parser."""

import subprocess
import sys

import pytest

from kvmvm.cli.options import BOOT, parse
from kvmvm.record import Factory, record


@record
class Point:
    x: int
    y: int = 2
    tags: list = Factory(list)


@record(frozen=True)
class Key:
    a: str


def test_record_init_defaults_factory_eq_repr():
    p, q = Point(1), Point(1, y=2)
    assert p == q and p.asdict() == {"x": 1, "y": 2, "tags": []}
    p.tags.append(1)
    assert q.tags == [] and repr(p) == "Point(x=1, y=2, tags=[1])"
    with pytest.raises(TypeError):
        Point()
    with pytest.raises(TypeError):
        Point(1, z=3)


def test_frozen_record():
    k = Key("a")
    with pytest.raises(AttributeError):
        k.a = "b"
    assert {k: 1}[Key("a")] == 1


def test_fast_parser_matches_defaults_and_values():
    kw = parse(BOOT, ["--kernel", "k", "--memory=64", "--drive", "a", "--drive", "b,ro", "--json",
                      "--entry", "64", "--append", "x y"])
    assert kw["kernel"] == "k" and kw["memory"] == 64 and kw["drives"] == ("a", "b,ro")
    assert kw["as_json"] is True and kw["entry"] == "64" and kw["cmdline"] == "x y"
    assert kw["cpus"] == 1 and kw["nets"] == () and kw["timeout"] is None


@pytest.mark.parametrize("argv", [["--help"], ["--cpus", "x"], ["--memory"], ["--entry", "bad"],
                                  ["stray"], ["--json=1"], ["--unknown", "1"]])
def test_fast_parser_defers_unusual_input_to_click(argv):
    assert parse(BOOT, argv) is None


def test_fast_path_does_not_import_click():
    code = ("import sys; from kvmvm.cli import _fast\n"
            "try:\n    _fast(['boot', '--kernel', '/nonexistent'])\nexcept Exception as e:\n    print(type(e).__name__)\n"
            "print('click' in sys.modules, 'dataclasses' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
    assert out == ["ConfigError", "False", "False"]


def test_root_help_and_version_do_not_import_click():
    """`kvmvm --help` lists every command with its module's one-line summary, and neither
    it nor `--version` imports click (or any command module)."""
    from kvmvm.cli import COMMANDS, _has_module

    code = ("import io, sys, contextlib; from kvmvm.cli import main\n"
            "for a in (['--help'], ['--version']):\n"
            "    assert main(a) == 0\n"
            "print('click' in sys.modules, sorted(m for m in sys.modules if m.startswith('kvmvm.cli.')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[-1] == "False []"
    cmds = {ln.split()[0]: ln.split(None, 1)[1] for ln in lines[lines.index("Commands:") + 1:-2] if ln.strip()}
    assert set(cmds) == {n for n in COMMANDS if _has_module(n)}
    assert cmds["boot"] == "Boot a kernel in a fresh microVM, console on this terminal."
    assert lines[-2].startswith("kvmvm ") and "(C core build " in lines[-2]


@pytest.mark.parametrize("value", [
    {"outcome": "ok", "code": 0, "rip": 0x100026, "stats": {"exits": 57, "dropped": 0},
     "timings_ms": {"process_start": -12.5, "vm_created": 3.25, "boot_signal": None, "end": 1e-07}},
    {"message": 'guest said "hi"\\\n\t\x00\x1f\x7f caf\u00e9 \u2603 \U0001F600', "ok": True, "no": False},
    [1, -2, 3.0, float("inf"), float("-inf"), [], {}, ("a", None)],
    {"big": 2 ** 70, "neg": -0.0, "key \u00e9": "v"},
])
def test_json_line_is_json_dumps(value):
    """`kvmvm boot --json` writes its line without the json module: the same text."""
    import json

    from kvmvm.cli.booting import json_line

    assert json_line(value) == json.dumps(value)


def test_json_line_nan():
    import json

    from kvmvm.cli.booting import json_line

    assert json_line(float("nan")) == json.dumps(float("nan")) == "NaN"
