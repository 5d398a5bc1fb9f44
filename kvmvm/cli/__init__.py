"""The kvmvm command line: a click group with one module per command.

Errors raised on purpose (KvmvmError) become one line on stderr and an exit status
(2 for bad input, 1 for failures); a traceback only when KVMVM_DEBUG=1.
Commands are imported lazily so `kvmvm boot` pays only for what it uses.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

# command name -> module under kvmvm.cli (each defines `cli`, a click.Command)
COMMANDS = {
    "boot": "boot",
    "run": "run",
    "image": "image",
    "bench": "bench",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(n for n in COMMANDS if _has_module(n))

    def get_command(self, ctx, name):
        if name not in COMMANDS or not _has_module(name):
            return None
        mod = importlib.import_module(f"kvmvm.cli.{COMMANDS[name]}")
        return mod.cli


def _has_module(name: str) -> bool:
    here = os.path.dirname(__file__)
    return os.path.exists(os.path.join(here, COMMANDS[name] + ".py"))


def abort(msg: str, code: int = 1) -> "NoReturn":  # noqa: F821
    """Print one clear line and exit with `code`."""
    click.echo(f"kvmvm: {msg}", err=True)
    sys.exit(code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kvmvm", message="kvmvm %(version)s")
def root():
    """kvmvm: hardware-isolated microVMs on Linux KVM."""


def main(argv=None):
    """Entry point: run the click group, turning kvmvm errors into one line + exit code."""
    from kvmvm.errors import KvmvmError

    debug = os.environ.get("KVMVM_DEBUG") == "1"
    try:
        rv = root.main(args=argv, prog_name="kvmvm", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("kvmvm: aborted", err=True)
        return 130
    except click.ClickException as e:
        # usage errors: one line (click's own), exit 2
        click.echo(f"kvmvm: {e.format_message()}", err=True)
        return e.exit_code
    except KvmvmError as e:
        if debug:
            raise
        click.echo(f"kvmvm: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:  # a bug in kvmvm: still one line unless debugging
        if debug:
            raise
        click.echo(f"kvmvm: internal error: {type(e).__name__}: {e} (KVMVM_DEBUG=1 for a traceback)", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
