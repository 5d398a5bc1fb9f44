"""The kvmvm command line: a click group with one module per command.

Errors raised on purpose (KvmvmError) become one line on stderr and an exit status
(2 for bad input, 1 for failures); a traceback only when KVMVM_DEBUG=1.
`kvmvm boot` with ordinary arguments skips click altogether (kvmvm.cli.options): start-up
time is part of a microVM's boot time. Anything unusual (--help, a bad value) goes to click.
`kvmvm --help` and `kvmvm --version` skip click too: the command list is read from each
command module's docstring ("`kvmvm NAME`: what it does.") without importing it.
"""

import os   # no `from __future__ import annotations`: the annotations here are 3.9's, and
            # every import before a command starts counts (kvmvm boot, kvmvm firecracker)
import sys
import time

T0 = time.monotonic_ns()     # the CLI's "time zero" for --json timings

# command name -> module under kvmvm.cli (each defines `cli`, a click.Command)
COMMANDS = {
    "boot": "boot",
    "run": "run",
    "image": "image",
    "kernel": "kernel",
    "guests": "guests",
    "doctor": "doctor",
    "images": "images",
    "volume": "volume",
    "bench": "bench",
    "jail": "jail",
    "firecracker": "firecracker",
    "vm": "vm",
    "restore": "restore",
    "sandbox": "sandbox",
}


def _has_module(name: str) -> bool:
    here = os.path.dirname(__file__)
    return os.path.exists(os.path.join(here, COMMANDS[name] + ".py"))


def _summary(name: str, width: int = 66) -> str:
    """The first sentence of the command module's docstring, after "`kvmvm NAME`: "."""
    try:
        with open(os.path.join(os.path.dirname(__file__), COMMANDS[name] + ".py")) as f:
            head = f.read(2048)
    except OSError:
        return ""
    doc = head.partition('"""')[2].partition('"""')[0]
    doc = " ".join(doc.split())
    if doc.startswith("`"):
        doc = doc.split("`: ", 1)[-1]
    end = doc.find(". ")
    doc = doc[:end + 1] if end >= 0 else doc
    doc = doc[:1].upper() + doc[1:]
    return doc if len(doc) <= width else doc[:width - 3].rstrip() + "..."


def root_help() -> str:
    """`kvmvm --help`, without importing click or any command."""
    names = sorted(n for n in COMMANDS if _has_module(n))
    w = max(map(len, names))
    return "\n".join([
        "Usage: kvmvm [OPTIONS] COMMAND [ARGS]...", "",
        "  kvmvm: hardware-isolated microVMs on Linux KVM.", "",
        "Options:",
        "  --version   Show the version and the C core's build, and exit.",
        "  -h, --help  Show this message and exit.", "",
        "Commands:", *(f"  {n:<{w}}  {_summary(n)}" for n in names), ""])


def _fast_root(argv: list[str]):
    """`kvmvm`, `kvmvm --help` and `kvmvm --version` without click; None otherwise."""
    if argv in (["--help"], ["-h"]):
        sys.stdout.write(root_help())
        return 0
    if not argv:
        sys.stderr.write(root_help())
        return 2
    if argv == ["--version"]:
        from kvmvm.version import version_line

        sys.stdout.write(version_line() + "\n")
        return 0
    return None


def _fast(argv: list[str]):
    """kvmvm boot / restore / firecracker without click, when the arguments are plain;
    None otherwise."""
    if argv[:1] == ["firecracker"]:
        from kvmvm.cli.firecracker import main as firecracker_main

        return firecracker_main(argv[1:])
    if argv[:1] == ["restore"] and len(argv) > 1 and not argv[1].startswith("-"):
        from kvmvm.cli.options import RESTORE, parse

        kw = parse(RESTORE, argv[2:])
        if kw is None:
            return None
        from kvmvm.cli.restoring import run

        return run(argv[1], **kw)
    if argv[:1] != ["boot"]:
        return None
    from kvmvm.cli.options import BOOT, parse

    kw = parse(BOOT, argv[1:])
    if kw is None:
        return None
    from kvmvm.cli.booting import run

    return run(**kw)


def _click_main(argv: list[str]) -> int:
    import click

    class LazyGroup(click.Group):
        def list_commands(self, ctx):
            return sorted(n for n in COMMANDS if _has_module(n))

        def get_command(self, ctx, name):
            if name not in COMMANDS or not _has_module(name):
                return None
            import importlib

            return importlib.import_module(f"kvmvm.cli.{COMMANDS[name]}").cli

    @click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
    def root():
        """kvmvm: hardware-isolated microVMs on Linux KVM."""

    try:
        rv = root.main(args=argv, prog_name="kvmvm", standalone_mode=False)
    except click.exceptions.Abort:
        sys.stderr.write("kvmvm: aborted\n")
        return 130
    except click.ClickException as e:
        # usage errors: one line (click's own), exit 2
        sys.stderr.write(f"kvmvm: {e.format_message()}\n")
        return e.exit_code
    return rv if isinstance(rv, int) else 0


def _fill_stdio() -> None:
    """Closed stdin/stdout/stderr become /dev/null: otherwise the next file opened (/dev/kvm,
    a drive image) would take fd 1 and the guest's console would be written into it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            got = os.open(os.devnull, os.O_RDWR)
            if got != fd:       # a lower fd was free too: it is filled on its own turn
                os.dup2(got, fd)
                os.close(got)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP end a command the way Ctrl-C does (KeyboardInterrupt: a running VM
    is stopped and torn down, its sockets and TAPs removed; exit status 130).

    Through `_signal` (the C module): `signal` wraps it in enums, and importing `enum`
    (with functools and collections) costs more than a tiny guest's whole run."""
    import _signal

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    for sig in (_signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(sig, on_signal)


def main(argv=None):
    """Entry point: run a command, turning kvmvm errors into one line + exit code."""
    try:
        _stop_on_signals()
        return _main(argv)
    except KeyboardInterrupt:   # wherever a signal lands, even inside an error handler
        return 130


def _main(argv):
    _fill_stdio()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("KVMVM_DEBUG") == "1"
    try:
        rv = _fast_root(argv)
        if rv is None:
            rv = _fast(argv)
        if rv is None:
            rv = _click_main(argv)
        return rv
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:
        # kvmvm.errors only now: `kvmvm --help` and `--version` never need it
        from kvmvm.errors import KvmvmError

        if debug:
            raise
        if isinstance(e, KvmvmError):
            sys.stderr.write(f"kvmvm: {e}\n")
            return e.exit_code
        # a bug in kvmvm: still one line unless debugging
        sys.stderr.write(f"kvmvm: internal error: {type(e).__name__}: {e} (KVMVM_DEBUG=1 for a traceback)\n")
        return 1


def entry():
    """The `kvmvm` command (bin/kvmvm, `python -m kvmvm`): main(), then exit."""
    rv = main()
    if sys.argv[1:2] in (["boot"], ["firecracker"]):
        exit_now(rv)
    sys.exit(rv)


def exit_now(rv) -> None:
    """Exit after a VM command: the VM is torn down already and Python's own finalisation
    would only free objects (a few ms of every boot, counted until the process is gone):
    run the atexit handlers, flush, and leave through os._exit instead."""
    import atexit

    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        rv = rv or 120      # what Python exits with when it cannot flush stdout
    os._exit(rv if isinstance(rv, int) else 1)


if __name__ == "__main__":
    entry()
