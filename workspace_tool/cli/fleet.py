"""Commands on the whole fleet of project schemas: `upgrade`, `downgrade`, `check`."""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING, Any

import click

from workspace_tool.cli.context import ARGV, AppContext, CommandError, pass_app, require_projects
from workspace_tool.cli.logs import quiet
from workspace_tool.cli.options import (
    adopt_option,
    confirm,
    fleet_options,
    jobs_option,
    json_option,
    read_ids,
    recycle_option,
    split_ids,
    yes_option,
)
from workspace_tool.cli.render import ProgressPrinter, few, print_drift_report, print_fleet_report, print_sql

if TYPE_CHECKING:
    from collections.abc import Callable

    from workspace_tool.fleet import FleetReport, RunSpec, Selection
    from workspace_tool.fleet.stages import Staging
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
def upgrade(app: AppContext, /, target: str, adopt: bool, **options: Any) -> None:
    """Bring project schemas (--all, or the named ones) up to a revision, in parallel.

    Each schema migrates in its own transaction under its own lock; a failure leaves that schema at its
    old revision. A target older than a named schema's revision is refused (that is a downgrade). A
    project the application drops meanwhile is reported gone, not failed. Exit 1 if any
    schema failed; rerunning picks up only what is left."""
    from workspace_tool import fleet

    _run_fleet(app, fleet.UPGRADE, target, adopt=adopt, **options)


@click.command()
@fleet_options
@click.option("--to", "target", required=True, metavar="REV", help="Target revision ('base' for empty).")
@yes_option
@pass_app
def downgrade(app: AppContext, /, target: str, **options: Any) -> None:
    """Bring project schemas (--all, or the named ones) down to a revision, in parallel.

    What the undone revisions made is dropped, with its data: it asks first on a terminal; without one,
    --yes confirms (not needed with --sql). A project the application drops meanwhile is reported gone,
    not failed."""
    from workspace_tool import fleet

    _run_fleet(app, fleet.DOWNGRADE, target, **options)


def _run_fleet(
    app: AppContext,
    operation: Operation,
    target: str,
    *,
    project_ids: tuple[str, ...],
    all_: bool,
    jobs: int | None,
    recycle_after: int | None,
    fail_fast: bool | None,
    lock_timeout: int,
    retries: int,
    show_sql: bool,
    as_json: bool,
    adopt: bool = False,
    states: tuple[tuple[str, ...], ...],
    globs: tuple[str, ...],
    ids_from: str | None,
    **stages: Any,
) -> None:
    """The command's options as one RunSpec, then the run (or its SQL, with --sql) and its report."""
    from workspace_tool import fleet
    from workspace_tool.fleet import RunSpec, StopReason

    if bool(project_ids) == all_:
        raise click.UsageError("name the projects, or pass --all (not both)")
    spec = RunSpec(
        target,
        None if all_ else project_ids,
        selection=_selection(states, globs, ids_from),
        staging=_staging(fail_fast, all_, **stages),
        jobs=jobs,
        lock_timeout_ms=lock_timeout,
        retries=retries,
        recycle_after=recycle_after,
        adopt=adopt,
        dry_run=show_sql,
    )
    app.jobs = jobs  # before the engine is made: its pool is sized for them
    chain = app.chain
    _refuse_the_other_way(app, operation, target, require_projects(app, project_ids) if project_ids else [])
    if operation == fleet.DOWNGRADE and not spec.dry_run:
        who = (
            ("every selected project" if spec.selection is not None else "every project") if all_ else few(project_ids)
        )
        confirm(f"downgrading {who} to {target} drops what the undone revisions made, with its data")
    if spec.dry_run:
        print_sql(fleet.render_sql(app.engine, chain, operation, spec), as_json)
        return
    run_and_report(
        app,
        operation,
        spec,
        as_json,
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
    interrupted."""
    from workspace_tool import fleet

    app.jobs = spec.jobs  # before the engine is made: its pool is sized for them
    printer = None if quiet() else ProgressPrinter(sys.stderr)
    report = fleet.run(app.engine, app.chain, operation, spec, progress=printer, direct_engine=app.direct_engine)
    if printer is not None:
        printer.finish()
    print_fleet_report(report, as_json, follow_up(report) if follow_up is not None else None)
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


def _selection(states: tuple[tuple[str, ...], ...], globs: tuple[str, ...], ids_from: str | None) -> Selection | None:
    """--state, --match, --ids-from as the library's Selection (None: take every project read)."""
    if not (states or globs or ids_from):
        return None
    from workspace_tool.fleet import Selection

    ids = read_ids(ids_from, "--ids-from") if ids_from else None
    return Selection(states=[s for given in states for s in given], match=globs, ids=ids)


def _staging(
    fail_fast: bool | None,
    all_: bool,
    *,
    canary: str | None,
    canary_ids: tuple[str, ...],
    canary_ids_from: str | None,
    canary_only: bool,
    order: str | None,
    seed: int | None,
    max_failures: str | None,
) -> Staging:
    """The stage options as the RunSpec's Staging, checked by the library's rules (a usage error if not)."""
    from workspace_tool.errors import ConfigurationError
    from workspace_tool.fleet.stages import Staging

    if max_failures is not None and fail_fast is not None:
        raise click.UsageError(
            "--max-failures and --fail-fast/--continue-on-error: pass one (--fail-fast is --max-failures 1, "
            "--continue-on-error sets no limit)"
        )
    named = [i for given in canary_ids for i in split_ids(given)]
    if canary_ids_from:
        named += read_ids(canary_ids_from, "--canary-ids-from")
    try:
        return Staging.parse(
            fail_fast=(not all_ and max_failures is None) if fail_fast is None else fail_fast,
            max_failures=max_failures,
            canary=canary,
            canary_ids=named if canary_ids or canary_ids_from else None,
            canary_only=canary_only,
            order=order,
            seed=seed,
        )
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None


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

    app.jobs = jobs  # before the engine is made: its pool is sized for them
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
