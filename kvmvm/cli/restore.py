"""`kvmvm restore SNAPDIR`: run a microVM again from a snapshot, where it was."""

from __future__ import annotations

import click

from kvmvm.cli.options import RESTORE
from kvmvm.cli.restoring import run


def _click_options(f):
    for o in reversed(RESTORE):
        kw = dict(help=o.help, default=o.default, multiple=o.multiple, metavar=o.metavar)
        if o.kind == "flag":
            kw.update(is_flag=True)
            kw.pop("metavar")
        else:
            kw.update(type=o.kind)
        f = click.option(*o.flags, o.dest, **kw)(f)
    return f


@click.command("restore")
@click.argument("snapdir")
@_click_options
def cli(snapdir, **kw):
    """Restore a snapshot and run it to its end, console on this terminal.

    Exit status: as `kvmvm boot`; 2 for a snapshot that cannot be restored here
    (missing, truncated, corrupt, another format version or CPU).
    """
    return run(snapdir, **kw)
