"""Fleet commands: `upgrade`, `downgrade`, `check`. Parse, call one library function, render."""

from __future__ import annotations

import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO, TypeVar

import click

from workspace_tool import drift, fleet
from workspace_tool.cli import NO_REGISTRY, AppContext, adopt_option, json_option, main, pass_app
from workspace_tool.cli.render import emit, to_json

F = TypeVar("F", bound=Callable[..., Any])
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min)?\s*$")


def parse_duration_ms(value: str) -> int:
    """'5s', '200ms', '1.5s', '2min'; a bare number is milliseconds, as in PostgreSQL's lock_timeout."""
    match = _DURATION.match(value)
    if not match or float(match.group(1)) <= 0:
        raise click.BadParameter(f"{value!r} is not a duration like 5s, 200ms or 1min")
    factor = {"ms": 1, "s": 1000, "min": 60000, None: 1}[match.group(2)]
    return max(1, round(float(match.group(1)) * factor))


class DurationType(click.ParamType[int]):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration_ms(str(value))
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


def fleet_options(f: F) -> F:
    options = [
        click.argument("project_ids", nargs=-1),
        click.option("--all", "all_", is_flag=True, help="Every project in the registry."),
        click.option("--jobs", "-j", type=click.IntRange(min=1), help="Parallel connections (default: 2 per core)."),
        click.option(
            "--fail-fast/--continue-on-error",
            default=None,
            help="Stop starting schemas after the first failure (default for named projects), or carry on "
            "(default for --all).",
        ),
        click.option(
            "--lock-timeout",
            type=DurationType(),
            default="5s",
            show_default=True,
            help="Longest wait for any lock in a schema's transaction (e.g. 200ms, 5s); then retry.",
        ),
        click.option(
            "--retries",
            type=click.IntRange(min=0),
            default=fleet.DEFAULT_RETRIES,
            show_default=True,
            help="Retries, with backoff, of a schema whose lock wait timed out or whose connection was lost.",
        ),
        click.option("--sql", "show_sql", is_flag=True, help="Print each schema's SQL and change nothing."),
        json_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


@main.command()
@fleet_options
@click.option("--to", "target", default="head", show_default=True, metavar="REV", help="Target revision.")
@adopt_option
@pass_app
def upgrade(app: AppContext, /, target: str, adopt: bool, **options: Any) -> None:
    """Bring project schemas (--all, or the named ones) up to a revision, in parallel.

    Each schema migrates in its own transaction under its own lock; a failure leaves that schema at its
    old revision. Exit 1 if any schema failed; rerunning picks up only what is left."""
    _run_fleet(app, fleet.UPGRADE, target, adopt=adopt, **options)


@main.command()
@fleet_options
@click.option("--to", "target", required=True, metavar="REV", help="Target revision ('base' for empty).")
@pass_app
def downgrade(app: AppContext, /, target: str, **options: Any) -> None:
    """Bring project schemas (--all, or the named ones) down to a revision, in parallel."""
    _run_fleet(app, fleet.DOWNGRADE, target, **options)


def _run_fleet(
    app: AppContext,
    operation: fleet.Operation,
    target: str,
    *,
    project_ids: tuple[str, ...],
    all_: bool,
    jobs: int | None,
    fail_fast: bool | None,
    lock_timeout: int,
    retries: int,
    show_sql: bool,
    as_json: bool,
    adopt: bool = False,
) -> None:
    if bool(project_ids) == all_:
        raise click.UsageError("name the projects, or pass --all (not both)")
    ids = None if all_ else list(project_ids)
    app.jobs = jobs  # before the engine is made: its pool is sized for them
    chain = app.manager.chain
    if show_sql:
        scripts = fleet.sql(app.engine, chain, ids, target=target, operation=operation, lock_timeout_ms=lock_timeout)
        _print_sql(scripts, as_json)
        return
    printer = ProgressPrinter(sys.stderr)
    report = fleet.run(
        app.engine,
        chain,
        operation,
        ids,
        target=target,
        jobs=jobs,
        fail_fast=(not all_) if fail_fast is None else fail_fast,
        lock_timeout_ms=lock_timeout,
        retries=retries,
        progress=printer,
        adopt=adopt,
    )
    printer.finish()
    if as_json:
        sys.stdout.write(to_json(report.as_dict()) + "\n")
    else:
        print_summary(report, sys.stdout)
    if report.interrupted:
        sys.exit(130)
    if report.failed:
        sys.exit(1)


def _print_sql(scripts: list[fleet.SchemaSQL], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(to_json([s.as_dict() for s in scripts]) + "\n")
        return
    for script in scripts:
        if script.sql is not None:
            sys.stdout.write(script.sql + "\n")
    quiet = [s for s in scripts if s.sql is None]
    notes: dict[str, int] = {}
    for script in quiet:
        notes[script.note or "nothing to do"] = notes.get(script.note or "nothing to do", 0) + 1
    with_sql = len(scripts) - len(quiet)
    click.echo(f"{with_sql} schema(s) would change; nothing was changed.", err=True)
    for note, count in notes.items():
        click.echo(f"{count} schema(s): {note}", err=True)


class ProgressPrinter:
    """done/total, failures, rate and ETA on stderr: a bar redrawn in place on a terminal, plain lines
    (at most one a second, plus one per failure) otherwise."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None, width: int = 30) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.width = width
        self._last = 0.0
        self._drawn = False
        self._stopped = False

    def __call__(self, event: fleet.Progress) -> None:
        result = event.result
        if result is not None and result.status == fleet.FAILED:
            self._clear()
            self.stream.write(f"[{event.done}/{event.total}] {result.schema} failed: {result.error}\n")
        if event.stopped is not None and not self._stopped:
            self._clear()
            self.stream.write(f"Stopping: {event.stopped}; starting no more schemas: rerun when the database is back\n")
            self._stopped = True
        now = time.monotonic()
        final = event.done == event.total
        if event.result is None and event.total:
            self.stream.write(f"{event.total} schema(s) to migrate\n")
        elif self.tty:
            self._clear()
            self.stream.write(self._line(event, bar=True))
            self._drawn = True
        elif final or now - self._last >= 1.0:
            self.stream.write(self._line(event, bar=False) + "\n")
            self._last = now
        self.stream.flush()

    def _line(self, event: fleet.Progress, *, bar: bool) -> str:
        eta = "-" if event.eta_s is None else f"{event.eta_s:.0f}s"
        text = f"{event.done}/{event.total} done, {event.failed} failed, {event.rate:.1f}/s, ETA {eta}"
        if not bar:
            return text
        filled = int(self.width * event.done / event.total) if event.total else self.width
        return f"\r[{'#' * filled}{'.' * (self.width - filled)}] {text}"

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False
        self.stream.flush()


def print_summary(report: fleet.FleetReport, out: TextIO) -> None:
    """Counts and timings by status, then each failed schema with its error."""
    rows = []
    for status in (fleet.OK, fleet.FAILED, fleet.SKIPPED):
        results = report.with_status(status)
        timed = [r.ms for r in results if r.ms]
        rows.append(
            {
                "status": status,
                "schemas": len(results),
                "median_ms": statistics.median(timed) if timed else None,
                "max_ms": max(timed) if timed else None,
            }
        )
    emit(rows, ["status", "schemas", "median_ms", "max_ms"], as_json=False, out=out)
    if report.failed:
        out.write("\n")
        emit(
            [r.as_dict() for r in report.failed],
            ["project_id", "schema", "from_revision", "to_revision", "attempts", "error"],
            as_json=False,
            out=out,
        )
    click.echo(
        f"{report.operation} to {report.target or 'base'}: {report.counts()[fleet.OK]} ok, "
        f"{len(report.failed)} failed, {report.counts()[fleet.SKIPPED]} skipped{_skipped_detail(report)}"
        f" in {report.elapsed_ms / 1000:.2f}s with {report.jobs} jobs ({report.executor})",
        err=True,
    )


def _skipped_detail(report: fleet.FleetReport) -> str:
    """Which skipped schemas another run moved, and which this run did not start, and why."""
    parts = []
    if moved := len(report.moved_by_another_run()):
        parts.append(f"{moved} {fleet.MOVED_BY_ANOTHER_RUN}")
    if not_started := len(report.not_started()):
        parts.append(f"{not_started} not started: {report.stopped}")
    return f" ({'; '.join(parts)})" if parts else ""


@main.command()
@click.argument("project_ids", nargs=-1)
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Parallel connections (default: 2 per core).")
@json_option
@pass_app
def check(app: AppContext, project_ids: tuple[str, ...], jobs: int | None, as_json: bool) -> None:
    """Exit 0 only if every project schema is registered, at head, and matches the head model.

    The model is the catalog the chain builds at head: stored in the registry by `init` and fleet runs,
    else built in a scratch schema in a transaction that is rolled back. Each schema's tables, columns,
    indexes and constraints are compared with it (a fingerprint per schema, then the differences of those
    that differ). Read-only; on a database where nothing was provisioned yet it says so (exit 0)."""
    app.jobs = jobs  # before the engine is made: its pool is sized for them
    report = drift.check(app.engine, app.manager.chain, list(project_ids) or None, jobs=jobs)
    if as_json:
        sys.stdout.write(to_json(report.as_dict()) + "\n")
    elif report.registry or report.schemas:
        for schema in report.failing:
            click.echo(f"{schema.schema} (project {schema.project_id}, {schema.state}):")
            for problem in schema.problems:
                click.echo(f"  {problem}")
        click.echo(
            f"{len(report.schemas)} schema(s) checked against head {report.head}: "
            + ("all match" if report.ok else f"{len(report.failing)} differ"),
            err=True,
        )
    if not report.registry:
        click.echo(NO_REGISTRY, err=True)
    if not report.ok:
        sys.exit(1)
