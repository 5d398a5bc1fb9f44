"""`kvmvm restore SNAPDIR`: run a microVM again from a snapshot, where it was."""

from __future__ import annotations

import click

from kvmvm.cli.boot import click_options
from kvmvm.cli.options import RESTORE
from kvmvm.cli.restoring import run


@click.command("restore")
@click.argument("snapdir")
@click_options(RESTORE)
def cli(snapdir, **kw):
    """Restore a snapshot and run it to its end, console on this terminal.

    Exit status: as `kvmvm boot`; 2 for a snapshot that cannot be restored here
    (missing, truncated, corrupt, another format version or CPU).
    """
    return run(snapdir, **kw)
