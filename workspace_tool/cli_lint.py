"""`workspace-tool lint`: the static check of the chain (no database needed)."""

from __future__ import annotations

import sys

import click

from .cli import AppContext, json_option, main, pass_app
from .lint import check_chain
from .output import to_json


@main.command()
@json_option
@pass_app
def lint(app: AppContext, as_json: bool) -> None:
    """Check every revision of the chain, statically, for references outside the project schema:
    schema= arguments (ignored by the translate map on ALTER-type ops), schema-qualified names in raw SQL,
    ForeignKeys into other schemas, search_path changes. One line per finding (file:line: message);
    exit 1 if there are any."""
    checked, findings = check_chain(app.config)
    if as_json:
        click.echo(to_json({"revisions": checked, "findings": [vars(f) for f in findings]}))
    else:
        for finding in findings:
            click.echo(str(finding))
        noun = "revision" if checked == 1 else "revisions"
        summary = f"{len(findings)} finding(s)" if findings else "no findings"
        click.echo(f"Checked {checked} {noun}: {summary}.", err=True)
    if findings:
        sys.exit(1)
