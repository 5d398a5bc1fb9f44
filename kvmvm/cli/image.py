"""`kvmvm image`: build and list kvmvm's own guest kernel and default initramfs."""

from __future__ import annotations

import json
import sys
import time

import click

from kvmvm.errors import ConfigError
from kvmvm.image import Artifacts, PlainProgress, Progress, build_default, cached_default


class RichProgress(Progress):
    """One live line: spinner, phase, a bar when the phase has a size, steps, elapsed time
    and the last make line; each finished phase leaves a check-marked line above it.
    Used when stderr is a terminal."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import (BarColumn, Progress as Bar, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn)

        self.console = Console(stderr=True, highlight=False)
        self.bar = Bar(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                       TextColumn("{task.completed:>5.0f}"), TimeElapsedColumn(),
                       TextColumn("[dim]{task.fields[last]}"), console=self.console,
                       transient=True, refresh_per_second=8)
        self.task = None
        self.name = None
        self.t0 = 0.0

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self._finish()
        self.bar.stop()

    def _finish(self):
        if self.name is not None:
            self.console.print(f"[green]✓[/] {self.name} [dim]({time.monotonic() - self.t0:.1f}s)")
            self.name = None

    def phase(self, name, total=None):
        self._finish()
        self.name, self.t0 = name, time.monotonic()
        if self.task is None:
            self.task = self.bar.add_task(name, total=total, last="")
        else:
            self.bar.reset(self.task, total=total, description=name, last="")

    def step(self, line):
        t = self.bar.tasks[0]
        total = t.total
        if total is not None and t.completed + 1 >= total:
            total = int(total * 1.1)  # the estimate was low: keep the bar short of full
        self.bar.update(self.task, advance=1, total=total, last=line.strip()[:60])

    def note(self, line):
        self.console.print(f"kvmvm image: {line}", soft_wrap=True)

    def done(self, summary):
        self._finish()
        self.console.print(summary)


class _Plain(PlainProgress):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
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
            click.echo(f"{name:<11} not built (kvmvm image build)")
        else:
            click.echo(f"{name:<11} {p}  ({p.stat().st_size / 1e6:.1f} MB)")


@click.group("image")
def cli():
    """kvmvm's guest kernel (vmlinux, bzImage) and default initramfs."""


@cli.command("build")
@click.option("--plain", is_flag=True, help="Plain progress lines even on a terminal.")
@click.option("--jobs", "-j", type=int, default=None, help="Parallel make jobs (default: all CPUs).")
@click.option("--force", is_flag=True, help="Rebuild even when the cache has a result.")
@click.option("--json", "as_json", is_flag=True, help="Print the resulting paths as JSON.")
def build_cmd(plain, jobs, force, as_json):
    """Build the guest kernel and default initramfs into the cache (instant when cached)."""
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, not {jobs}")
    with _progress(plain) as progress:
        art = build_default(jobs=jobs, force=force, progress=progress)
    _print_artifacts(art, as_json)


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print an object: vmlinux, bzimage, initramfs, key, ...")
def list_cmd(as_json):
    """Show the cached kernel and initramfs for the current inputs."""
    _print_artifacts(cached_default(), as_json)


# container images: kvmvm image import|ls|rm|prune (kvmvm/cli/images.py)
from kvmvm.cli.images import COMMANDS as _IMAGE_COMMANDS  # noqa: E402

for _c in _IMAGE_COMMANDS:
    cli.add_command(_c)
