"""`workspace-tool verify-fast-path`: the fast path against Alembic online, range by range."""

from __future__ import annotations

import sys

import click

from workspace_tool.cli import AppContext, json_option, main, pass_app
from workspace_tool.cli.render import emit, to_json
from workspace_tool.verification import verify_fast_path


@main.command(name="verify-fast-path")
@json_option
@pass_app
def verify_fast_path_command(app: AppContext, as_json: bool) -> None:
    """Provision scratch schemas online and through the fast path and compare their catalogs, for fresh
    provisioning and every upgrade and downgrade range; exit 1 on any difference. Nothing is kept: it all
    runs in a transaction that is rolled back."""
    report = verify_fast_path(app.engine, app.manager.chain)
    rows = [c.as_dict() for c in report.checks]
    if as_json:
        click.echo(
            to_json(
                {"head": report.head, "fingerprint": report.fingerprint, "identical": report.identical, "ranges": rows}
            )
        )
    else:
        emit(rows, ["range", "kind", "fast_path", "result"], as_json=False)
        for check in report.differing:
            click.echo(f"\n{check.label}:")
            for line in check.differences:
                click.echo(f"  {line}")
        verdict = (
            f"All {len(rows)} ranges identical."
            if report.identical
            else f"{len(report.differing)} of {len(rows)} ranges differ."
        )
        click.echo(verdict, err=True)
    if not report.identical:
        sys.exit(1)
