"""`kvmvm volume ls|rm|create`: named ext4 volumes for `kvmvm run -v NAME:/path`.

Exit status: 0 done; 2 bad input, a volume that does not exist or is in use by a VM.
"""

from __future__ import annotations

import json

import click


@click.group("volume")
def cli():
    """Named volumes: ext4 images under $KVMVM_HOME/volumes, made on first use by kvmvm run -v."""


@cli.command("ls")
@click.option("--json", "as_json", is_flag=True, help="A JSON list: name, path, size, used, created, in_use.")
@click.option("--quiet", "-q", is_flag=True, help="Names only.")
def ls_cmd(as_json, quiet):
    """List volumes: NAME SIZE USED CREATED IN-USE."""
    from kvmvm.images.store import human_size
    from kvmvm.images.volumes import VolumeStore
    import time

    vols = VolumeStore().list()
    if as_json:
        click.echo(json.dumps([v.to_json() for v in vols], indent=2))
        return
    if quiet:
        for v in vols:
            click.echo(v.name)
        return
    rows = [(v.name, human_size(v.size), human_size(v.used),
             time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created)), "yes" if v.in_use else "no")
            for v in vols]
    head = ("NAME", "SIZE", "USED", "CREATED", "IN-USE")
    widths = [max(len(r[k]) for r in rows + [head]) for k in range(5)]
    for r in [head] + rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@cli.command("create")
@click.argument("name")
@click.option("--size", "size_mib", type=int, default=1024, show_default=True, help="Size in MiB (sparse).")
def create_cmd(name, size_mib):
    """Create a volume now instead of on first use."""
    from kvmvm.images.volumes import VolumeStore

    store = VolumeStore()
    if store.path(name).exists():
        from kvmvm.images.errors import VolumeError

        raise VolumeError(f"volume {name} already exists")
    store.get_or_create(name, size_mib=size_mib)
    click.echo(name)


@cli.command("rm")
@click.argument("names", nargs=-1, required=True)
def rm_cmd(names):
    """Remove volumes (refused while a VM uses one)."""
    from kvmvm.images.volumes import VolumeStore

    store = VolumeStore()
    for n in names:
        store.remove(n)
        click.echo(n)
