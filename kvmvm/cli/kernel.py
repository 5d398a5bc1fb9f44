"""`kvmvm kernel`: build and list kvmvm's own guest kernel and default initramfs (cached)."""

from __future__ import annotations

import json
import sys

import click

from kvmvm.errors import ConfigError
from kvmvm.image import Artifacts, PlainProgress, Progress, build_default, cached_default
from kvmvm.image.progress import RichPhases, Scoped


class RichProgress(RichPhases, Progress):
    """Steps counted, with the last make line, on the live line; used when stderr is a
    terminal."""

    def __init__(self, console=None):
        super().__init__("kvmvm kernel", "last", columns=("{task.completed:>5.0f}",),
                         trailing=("[dim]{task.fields[last]}",), console=console)

    def step(self, line):
        t = self.bar.tasks[0]
        total = t.total
        if total is not None and t.completed + 1 >= total:
            total = int(total * 1.1)  # the estimate was low: keep the bar short of full
        self.bar.update(self.task, advance=1, total=total, last=line.strip()[:60])

    def done(self, summary):
        self._finish()
        self.console.print(summary)


class _Plain(Scoped, PlainProgress):
    pass


def _progress(plain: bool):
    if plain or not sys.stderr.isatty():
        return _Plain()
    return RichProgress()


def _print_artifacts(art: Artifacts, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(art.to_json(), indent=2))
        return
    click.echo(f"home        {art.home}")
    click.echo(f"kernel      {art.kernel_version or '-'}  (key {art.key or '-'})")
    for name in ("vmlinux", "bzimage", "initramfs"):
        p = getattr(art, name)
        if p is None:
            click.echo(f"{name:<11} not built (kvmvm kernel build)")
        else:
            click.echo(f"{name:<11} {p}  ({p.stat().st_size / 1e6:.1f} MB)")


@click.group("kernel")
def cli():
    """kvmvm's guest kernel (vmlinux, bzImage) and default initramfs."""


@cli.command("build")
@click.option("--plain", is_flag=True, help="Plain progress lines even on a terminal.")
@click.option("--jobs", "-j", type=int, default=None, help="Parallel make jobs (default: all CPUs).")
@click.option("--force", is_flag=True, help="Rebuild even when the cache has a result.")
@click.option("--json", "as_json", is_flag=True, help="Print the resulting paths as JSON.")
@click.option("--install-deps", is_flag=True,
              help="Install missing Debian packages with apt-get first (needs root).")
def build_cmd(plain, jobs, force, as_json, install_deps):
    """Build the guest kernel and default initramfs into the cache (instant when cached).

    Missing Debian packages (linux-source-6.1, gcc, flex, ...) are named in one line;
    --install-deps installs them instead.
    """
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, not {jobs}")
    with _progress(plain) as progress:
        art = build_default(jobs=jobs, force=force, progress=progress, install_deps=install_deps)
    _print_artifacts(art, as_json)


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print an object: vmlinux, bzimage, initramfs, key, ...")
def list_cmd(as_json):
    """Show the cached kernel and initramfs for the current inputs."""
    _print_artifacts(cached_default(), as_json)
