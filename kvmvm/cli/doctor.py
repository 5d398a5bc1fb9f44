"""`kvmvm doctor`: check this host for kvmvm, one line per item: ok, warn, missing or fail, and how to fix it."""

from __future__ import annotations

import json
import sys

import click


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: ok, checks[].")
@click.option("--kvm", "kvm_path", default="/dev/kvm", show_default=True, help="The KVM device to check.")
def cli(as_json, kvm_path):
    """Check /dev/kvm, the KVM kind and capabilities, devices, tools and the kernel cache.

    Exit status 0 unless a check fails (kvmvm cannot run VMs here): 1.
    """
    from kvmvm.doctor import as_json as to_json, run_checks

    checks = run_checks(kvm_path)
    doc = to_json(checks)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        color = sys.stdout.isatty()
        paint = {"ok": "green", "warn": "yellow", "missing": "yellow", "fail": "red"}
        w = max(len(c.name) for c in checks)
        for c in checks:
            status = click.style(f"{c.status:<7}", fg=paint[c.status]) if color else f"{c.status:<7}"
            click.echo(f"{status} {c.name:<{w}}  {c.detail}")
            if c.fix:
                click.echo(f"{'':<7} {'':<{w}}  fix: {c.fix}")
    return 0 if doc["ok"] else 1
