"""Container image commands: `kvmvm image import|ls|rm|prune` and `kvmvm images`.

`cli` here is `kvmvm images` (the same as `kvmvm image ls`); the others are added to the
`kvmvm image` group by kvmvm/cli/image.py. Exit status: 0 done; 1 failed (not found,
corrupt or truncated source, a tool failed or is missing); 2 bad input, or an image in use.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Optional

import click

from kvmvm.image.progress import RichPhases, Scoped
from kvmvm.images.progress import ImportProgress, PlainImportProgress


class RichImportProgress(RichPhases, ImportProgress):
    """A live line per phase with the bytes done when the size is known; finished phases
    and verified layers stay above it as check-marked lines."""

    def __init__(self, console=None):
        super().__init__("kvmvm image", "sizes", columns=("{task.fields[sizes]}",), console=console)

    def advance(self, n):
        from kvmvm.images.store import human_size

        t = self.bar.tasks[0]
        done = t.completed + n
        of = f"/{human_size(int(t.total))}" if t.total else ""
        self.bar.update(self.task, advance=n, sizes=f"{human_size(int(done))}{of}")

    def step(self, line):
        self.console.print(f"  [green]✓[/] {line}")


class _Plain(Scoped, PlainImportProgress):
    pass


class _Quiet(Scoped, ImportProgress):
    pass


def progress_for(plain: bool, quiet: bool):
    if quiet:
        return _Quiet()
    if plain or not sys.stderr.isatty():
        return _Plain()
    return RichImportProgress()


def _ago(created: Optional[str]) -> str:
    """podman's CREATED column: "3 days ago", "About a minute ago"."""
    if not created:
        return "-"
    try:
        t = datetime.fromisoformat(_iso(created))
    except ValueError:
        return created
    s = (datetime.now(timezone.utc) - t).total_seconds()
    if s < 0:
        return "In the future"
    if s < 60:
        return "Less than a minute ago" if s >= 1 else "Less than a second ago"
    for unit, k in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400),
                    ("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= k:
            n = int(s // k)
            if n == 1:
                return f"About a{'n' if unit == 'hour' else ''} {unit} ago"
            return f"{n} {unit}s ago"
    return "-"


def _iso(s: str) -> str:
    """RFC 3339 with nanoseconds and Z -> what datetime.fromisoformat reads (3.9+)."""
    s = s.strip().replace("Z", "+00:00")
    if "." in s:
        head, rest = s.split(".", 1)
        frac = "".join(c for c in rest if c.isdigit())
        tz = rest[len(frac):]
        s = f"{head}.{frac[:6].ljust(6, '0')}{tz}"
    if s[-6] not in "+-":
        s += "+00:00"
    return s


def list_images(as_json: bool, no_trunc: bool, quiet: bool) -> None:
    from kvmvm.images import ImageStore
    from kvmvm.images.store import human_size

    imgs = ImageStore().list()
    if as_json:
        click.echo(json.dumps([i.to_json() for i in imgs], indent=2))
        return
    if quiet:
        for i in imgs:
            click.echo(i.digest if no_trunc else i.id[:12])
        return
    rows = []
    for i in imgs:
        digest = i.digest if no_trunc else i.id[:12]
        for n in i.names or ["<none>:<none>"]:
            repo, _, tag = n.rpartition(":")
            rows.append((repo, tag, digest, human_size(i.size), _ago(i.created)))
    head = ("REPOSITORY", "TAG", "DIGEST", "SIZE", "CREATED")
    widths = [max(len(r[k]) for r in rows + [head]) for k in range(5)]
    for r in [head] + rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _list_options(f):
    f = click.option("--quiet", "-q", is_flag=True, help="Digests only.")(f)
    f = click.option("--no-trunc", is_flag=True, help="Full digests.")(f)
    return click.option("--json", "as_json", is_flag=True,
                        help="A JSON list: digest, names, size, created, rootfs, ...")(f)


@click.command("images")
@_list_options
def cli(as_json, no_trunc, quiet):
    """List container images (the same as kvmvm image ls)."""
    list_images(as_json, no_trunc, quiet)


@click.command("ls")
@_list_options
def ls_cmd(as_json, no_trunc, quiet):
    """List container images: REPOSITORY TAG DIGEST SIZE CREATED."""
    list_images(as_json, no_trunc, quiet)


@click.command("import")
@click.argument("source")
@click.option("--name", default=None, metavar="NAME[:TAG]", help="Name the image (replaces the archive's names).")
@click.option("--plain", is_flag=True, help="Plain progress lines even on a terminal.")
@click.option("--quiet", "-q", is_flag=True, help="No progress; only the result lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the imported images as JSON.")
def import_cmd(source, name, plain, quiet, as_json):
    """Import container images from SOURCE: a docker-archive or OCI archive (podman save,
    docker save, skopeo; - reads one from stdin), an OCI layout directory, podman:NAME (local
    podman storage), or a registry reference (docker://REF, through skopeo).
    Prints "NAME:TAG sha256:..." per image."""
    from kvmvm.images import ImageStore

    with progress_for(plain, quiet or as_json) as progress:
        imgs = ImageStore().import_(source, name=name, progress=progress)
    if as_json:
        click.echo(json.dumps([i.to_json() for i in imgs], indent=2))
        return
    for i in imgs:
        for n in i.assigned or ["<none>"]:
            click.echo(f"{n} {i.digest}")


@click.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.option("--force", "-f", is_flag=True, help="Remove an image even when it has several names.")
def rm_cmd(refs, force):
    """Remove images (by NAME[:TAG] or digest). A name of an image with several names is
    only untagged."""
    from kvmvm.images import ImageStore

    store = ImageStore()
    for r in refs:
        for line in store.remove(r, force=force):
            click.echo(line)


@click.command("prune")
def prune_cmd():
    """Remove images without a name, unreferenced layers and leftovers of interrupted imports."""
    from kvmvm.images import ImageStore
    from kvmvm.images.store import human_size

    res = ImageStore().prune()
    for d in res.images:
        click.echo(f"Deleted: {d}")
    click.echo(f"Reclaimed: {human_size(res.bytes)} ({res.blobs} blob{'s' if res.blobs != 1 else ''})")


COMMANDS = (import_cmd, ls_cmd, rm_cmd, prune_cmd)
