"""Commands on the whole fleet of project schemas: `upgrade`, `downgrade`, `check`."""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING

import click

from workspace_tool.cli.context import ARGV, AppContext, CommandError, pass_app, require_projects
from workspace_tool.cli.fleet_spec import FleetOptions, fleet_options
from workspace_tool.cli.logs import quiet
from workspace_tool.cli.options import adopt_option, confirm, jobs_option, json_option, recycle_option, yes_option
from workspace_tool.cli.render import ProgressPrinter, few, print_drift_report, print_fleet_report, print_sql

if TYPE_CHECKING:
    from collections.abc import Callable

    from workspace_tool.fleet import FleetReport, RunSpec
    from workspace_tool.schema.operation import Operation
    from workspace_tool.status import ProjectStatus

INTERRUPTED = 130  # the exit code of a run stopped by Ctrl-C, as a shell reports SIGINT
# The canary's options (and whether each takes a value): the command that continues a --canary-only run
# is the same command without them.
CANARY_OPTIONS = {"--canary": True, "--canary-ids": True, "--canary-ids-from": True, "--canary-only": False}


@click.command()
@fleet_options
@click.option("--to", "target", default="head", show_default=True, metavar="REV", help="Target revision.")
@adopt_option
@pass_app
def upgrade(app: AppContext, /, fleet: FleetOptions, target: str, adopt: bool) -> None:
    """Bring project schemas (--all, or the named ones) up to a revision, in parallel.

    Each schema migrates in its own transaction under its own lock; a failure leaves that schema at its
    old revision. A target older than a named schema's revision is refused (that is a downgrade). A
    project the application drops meanwhile is reported gone, not failed. Exit 1 if any
    schema failed; rerunning picks up only what is left."""
    from workspace_tool.fleet import UPGRADE

    _run_fleet(app, UPGRADE, fleet, target, adopt=adopt)


@click.command()
@fleet_options
@click.option("--to", "target", required=True, metavar="REV", help="Target revision ('base' for empty).")
@yes_option
@pass_app
def downgrade(app: AppContext, /, fleet: FleetOptions, target: str) -> None:
    """Bring project schemas (--all, or the named ones) down to a revision, in parallel.

    What the undone revisions made is dropped, with its data: it asks first on a terminal; without one,
    --yes confirms (not needed with --sql). A project the application drops meanwhile is reported gone,
    not failed."""
    from workspace_tool.fleet import DOWNGRADE

    _run_fleet(app, DOWNGRADE, fleet, target)


def _run_fleet(
    app: AppContext, operation: Operation, options: FleetOptions, target: str, *, adopt: bool = False
) -> None:
    """The command's options as one RunSpec, then the run (or its SQL, with --sql) and its report."""
    from workspace_tool import fleet
    from workspace_tool.fleet import StopReason

    spec = options.run_spec(operation, target, adopt=adopt)
    chain = app.chain
    project_ids = options.project_ids
    _refuse_the_other_way(app, operation, target, require_projects(app, project_ids) if project_ids else [])
    if operation == fleet.DOWNGRADE and not spec.dry_run:
        who = (
            ("every selected project" if spec.selection is not None else "every project")
            if options.all_
            else few(project_ids)
        )
        confirm(f"downgrading {who} to {target} drops what the undone revisions made, with its data")
    if spec.dry_run:
        print_sql(fleet.render_sql(app.engine, chain, operation, spec), options.as_json)
        return
    run_and_report(
        app,
        operation,
        spec,
        options.as_json,
        follow_up=lambda report: (
            _without_canary(app, report.seed if report.order == "random" else None)
            if report.stop_reason == StopReason.CANARY_ONLY
            else None
        ),
    )


def run_and_report(
    app: AppContext,
    operation: Operation,
    spec: RunSpec,
    as_json: bool,
    *,
    follow_up: Callable[[FleetReport], str | None] | None = None,
) -> FleetReport:
    """Every fleet command's run: ``operation`` as ``spec`` says, progress on stderr (not with -q), then the
    report (with the command to run next, if ``follow_up`` names one); exit 1 if any failed, 130 when
    interrupted. When the server could not confirm the run's commits, the report, then that error's line
    (exit 1)."""
    from workspace_tool import fleet
    from workspace_tool.errors import CommitsUnconfirmed

    printer = None if quiet() else ProgressPrinter(sys.stderr)
    unconfirmed: CommitsUnconfirmed | None = None
    try:
        report = fleet.run(app.engine, app.chain, operation, spec, progress=printer, direct_engine=app.direct_engine)
    except CommitsUnconfirmed as exc:
        report, unconfirmed = exc.report, exc
    if printer is not None:
        printer.finish()
    follow = follow_up(report) if follow_up is not None and unconfirmed is None else None
    print_fleet_report(report, as_json, follow)
    if unconfirmed is not None:
        raise unconfirmed
    if report.interrupted:
        click.get_current_context().exit(INTERRUPTED)
    if report.failed:
        click.get_current_context().exit(1)
    return report


def _refuse_the_other_way(app: AppContext, operation: Operation, target: str, statuses: list[ProjectStatus]) -> None:
    """An upgrade to a revision older than a named schema's (or to base) is a downgrade, and a downgrade to
    a newer one (or to head) an upgrade: a one-line error saying which command does it, nothing changed."""
    from workspace_tool import fleet

    chain = app.chain
    upgrading = operation == fleet.UPGRADE
    to = chain.position(chain.resolve(target))
    past = [
        s
        for s in statuses
        if chain.knows(s.revision)
        and (chain.position(s.revision) > to if upgrading else chain.position(s.revision) < to)
    ]
    if past:
        wrong = f"{past[0].schema} (at {past[0].revision or 'base'})" + (
            f" and {len(past) - 1} more" if len(past) > 1 else ""
        )
    elif to == (0 if upgrading else chain.position(chain.head)):  # nothing can go that way
        wrong = "every schema"
    else:
        return
    other = "downgrade" if upgrading else "upgrade"
    ids = " ".join(s.project_id for s in statuses) if statuses else "--all"
    raise CommandError(
        f"that is {'a downgrade' if upgrading else 'an upgrade'} for {wrong}: use "
        f"`workspace-tool {other} {ids} --to {target}`; nothing was changed"
    )


def _without_canary(app: AppContext, seed: int | None) -> str:
    """The command that continues a --canary-only run: this one without its canary options. The canary's
    schemas are at the target now, so it skips them and migrates the rest (with the same selection, order
    and --max-failures); a random order's ``seed``, when it was drawn, is added, so that the rest starts in
    the order it would have in one run. A password in the command line is shown as ***."""
    from workspace_tool.urls import redact_text

    args = click.get_current_context().meta.get(ARGV, [])
    kept: list[str] = []
    skip_value = False
    for arg in args:
        name, has_value = arg.split("=", 1)[0], "=" in arg
        if skip_value:
            skip_value = False
        elif name in CANARY_OPTIONS:
            skip_value = CANARY_OPTIONS[name] and not has_value
        else:
            kept.append(arg)
    if seed is not None and not any(arg == "--seed" or arg.startswith("--seed=") for arg in kept):
        kept += ["--seed", str(seed)]
    command = shlex.join(["workspace-tool", *kept])
    secrets = [s for s in app.passwords() if s]
    return redact_text(command, *secrets) if secrets else command


@click.command()
@click.argument("project_ids", nargs=-1)
@jobs_option
@recycle_option
@json_option
@pass_app
def check(
    app: AppContext, project_ids: tuple[str, ...], jobs: int | None, recycle_after: int | None, as_json: bool
) -> None:
    """Exit 0 only if every project schema is registered, at head, and matches the head model.

    The model is the catalog the chain builds at head: stored in the registry by `init` and fleet runs,
    else built in a scratch schema in a transaction that is rolled back. Each schema's tables, columns,
    indexes and constraints are compared with it (a fingerprint per schema, then the differences of those
    that differ). Read-only; on a database where nothing was provisioned yet it says so (exit 0)."""
    from workspace_tool import drift

    if project_ids:
        require_projects(app, project_ids)
    # the direct engine, when set: without a stored reference, check builds one (in parts, outside a
    # transaction, for a chain with such a revision)
    report = drift.check(
        app.session_engine, app.chain, list(project_ids) or None, jobs=jobs, recycle_after=recycle_after
    )
    print_drift_report(report, as_json)
    if not report.ok:
        click.get_current_context().exit(1)
