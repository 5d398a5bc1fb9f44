"""`kvmvm image`: guest images. `image build` and `image list` are deprecated aliases of
`kvmvm kernel build` and `kvmvm kernel list` (the guest kernel moved there)."""

from __future__ import annotations

import click

from kvmvm.cli import kernel as _kernel


@click.group("image")
def cli():
    """Container images: import, ls, rm, prune (`image build` / `image list`: deprecated, see `kvmvm kernel`)."""


def _alias(name: str, target: click.Command) -> click.Command:
    def callback(**kw):
        click.echo(f"kvmvm: `kvmvm image {name}` is deprecated: use `kvmvm kernel {name}`", err=True)
        return target.callback(**kw)

    return click.Command(name, params=target.params, callback=callback,
                         help=f"Deprecated: use `kvmvm kernel {name}`.")


cli.add_command(_alias("build", _kernel.build_cmd))
cli.add_command(_alias("list", _kernel.list_cmd))


# container images: kvmvm image import|ls|rm|prune (kvmvm/cli/images.py)
from kvmvm.cli.images import COMMANDS as _IMAGE_COMMANDS  # noqa: E402

for _c in _IMAGE_COMMANDS:
    cli.add_command(_c)
