"""`kvmvm guests`: the tiny test guests that come with kvmvm, and where they are."""

from __future__ import annotations

import json

import click

from kvmvm import tiny


@click.command("guests")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print an object: name -> path.")
def cli(name, as_json):
    """List the tiny test guests, or print the path of one.

    \b
    kvmvm guests                 every guest: name and image path
    kvmvm boot --kernel "$(kvmvm guests hello)"
    """
    if name is not None:
        click.echo(tiny.path(name))
        return 0
    found = tiny.guests()
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return 0
    if not found:
        tiny.path("hello")          # raises: none built, and how to get them
    for n, p in found.items():
        click.echo(f"{n:<18} {p}")
    return 0
