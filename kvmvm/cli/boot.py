"""`kvmvm boot`: boot a kernel in a fresh microVM, console on this terminal."""

from __future__ import annotations

import click

from kvmvm.cli.booting import DEFAULT_LINUX_CMDLINE, run  # noqa: F401 (re-exported)
from kvmvm.cli.options import BOOT


def click_options(table):
    """A decorator adding table's options (kvmvm.cli.options) to a click command."""
    return lambda f: _add_options(table, f)


def _add_options(table, f):
    for o in reversed(table):
        kw = dict(help=o.help, default=o.default, multiple=o.multiple, metavar=o.metavar)
        if o.kind == "flag":
            kw.update(is_flag=True)
            kw.pop("metavar")
        elif o.kind == "choice":
            kw.update(type=click.Choice(o.choices), show_default=True)
        else:
            kw.update(type=o.kind)
            if o.default not in (None, ()):
                kw.update(show_default=True)
        f = click.option(*o.flags, o.dest, **kw)(f)
    return f


@click.command("boot")
@click_options(BOOT)
def cli(**kw):
    """Boot a microVM.

    Exit status: the guest's debug-exit status (v<<1)|1 when it used one; 0 for reset,
    poweroff or halt; 1 when the VM failed (triple fault, KVM error); 3 when the guest
    kernel panicked; 124 on --timeout; 130 when interrupted; 2 for bad input.
    """
    return run(**kw)
