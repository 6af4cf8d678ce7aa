"""`workspace-tool lint`: the static check of the chain, and squawk over its compiled SQL (no database)."""

from __future__ import annotations

import sys

import click

from workspace_tool.chain import display_path
from workspace_tool.chain.lint import LintReport, lint_chain
from workspace_tool.chain.squawk import IGNORE_ATTRIBUTE
from workspace_tool.cli import AppContext, json_option, main, pass_app
from workspace_tool.cli.render import to_json


@main.command()
@click.option("--no-squawk", is_flag=True, help="Only the schema check: don't run squawk over the compiled SQL.")
@json_option
@pass_app
def lint(app: AppContext, no_squawk: bool, as_json: bool) -> None:
    """Check every revision of the chain, with no database.

    Statically, for references outside the project schema: schema= arguments (ignored by the translate
    map on ALTER-type ops), schema-qualified names in raw SQL, ForeignKeys into other schemas, search_path
    changes (file:line: message). Then squawk (the workspace-tool[squawk] extra) over each revision's
    compiled SQL, for locks, rewrites and breaking changes (file: squawk rule: message [statement]); rules
    are set in alembic.ini (workspace_squawk_exclude / workspace_squawk_include) and acknowledged per
    revision (workspace_squawk_ignore = [...]). One line per finding; exit 1 if there are any."""
    report = lint_chain(app.config, use_squawk=not no_squawk)
    if as_json:
        click.echo(to_json(report.as_dict()))
    else:
        for finding in report.findings:
            click.echo(str(finding))
        for unchecked in report.squawk_run.unchecked if report.squawk_run else ():
            click.echo(f"{display_path(unchecked.revision_path)}: not checked by squawk: {unchecked.reason}", err=True)
        click.echo(summary(report), err=True)
    if report.findings:
        sys.exit(1)


def summary(report: LintReport) -> str:
    noun = "revision" if report.revisions == 1 else "revisions"
    found = f"{len(report.findings)} finding(s)" if report.findings else "no findings"
    run = report.squawk_run
    if run is None:
        return f"Checked {report.revisions} {noun} (schema references; squawk not run): {found}."
    notes = [found]
    if run.acknowledged:
        notes.append(f"{len(run.acknowledged)} squawk finding(s) acknowledged by {IGNORE_ATTRIBUTE} in their revision")
    if run.unchecked:
        notes.append(f"{len(run.unchecked)} revision(s) not checked by squawk")
    checks = f"schema references; squawk {run.version} on the SQL"
    return f"Checked {report.revisions} {noun} ({checks}): {'; '.join(notes)}."
