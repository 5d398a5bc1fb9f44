"""`kvmvm jail -- BOOT ARGS`: `kvmvm boot --jail BOOT ARGS`, for a boot command line that
already exists (scripts, service files)."""

from __future__ import annotations

import click


@click.command("jail", context_settings={"ignore_unknown_options": True,
                                         "allow_interspersed_args": False})
@click.argument("boot_args", nargs=-1, type=click.UNPROCESSED)
def cli(boot_args):
    """Run `kvmvm boot BOOT_ARGS` jailed (see `kvmvm boot --help`, --jail-* options)."""
    from kvmvm.cli import main

    args = list(boot_args)
    if args[:1] == ["--"]:
        args = args[1:]
    if args[:1] == ["boot"]:
        args = args[1:]
    return main(["boot", "--jail", *args])
