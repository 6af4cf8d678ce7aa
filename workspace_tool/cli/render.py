"""What the commands print: aligned tables or JSON on stdout, messages and progress on stderr. The library's
types are imported only for type checking (and its constants when a report is printed), so that loading
the CLI stays cheap."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import click

from workspace_tool.cli.logs import note, verbosity

if TYPE_CHECKING:
    from workspace_tool.chain.lint import LintReport
    from workspace_tool.drift import CheckReport
    from workspace_tool.fleet import FleetReport, Progress, SchemaSQL
    from workspace_tool.verification import VerificationReport

SHOWN_IDS = 5  # the ids a one-line message names (then "and N more")
# What read commands (status, list, check) say on a database with no registry; they exit 0.
NO_REGISTRY = "No registry yet in this database: nothing has been provisioned (run `workspace-tool init` or `ensure`)"


# ------------------------------------------------------------------------------ tables and JSON
def few(names: Sequence[str], separator: str = ", ", shown: int | None = SHOWN_IDS) -> str:
    """The first ``shown`` names (all of them for None), then how many more: what a one-line message lists."""
    if shown is None or len(names) <= shown:
        return separator.join(names)
    return separator.join(names[:shown]) + f" and {len(names) - shown} more"


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 3)
    return value


def to_json(data: Any) -> str:
    return json.dumps(data, default=_plain, indent=2, sort_keys=False)


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """An aligned plain-text table; '-' for missing values."""
    heads = list(headers or [c.upper().replace("_", " ") for c in columns])
    cells = [[format_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def emit(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, as_json: bool) -> None:
    """Rows on stdout: JSON, or a table (nothing when there are none)."""
    if as_json:
        sys.stdout.write(to_json([{k: _plain(v) for k, v in r.items()} for r in rows]) + "\n")
    elif rows:
        sys.stdout.write(table(rows, columns) + "\n")


# ------------------------------------------------------------------------------ ensure
def action_word(action: str, adopted: bool = False) -> str:
    """What `ensure` prints for what it did: the registry's word (create, upgrade, downgrade, adopt, as
    `status` shows in LAST ACTION), and 'current' for a project that was already at the target (cached,
    verified)."""
    from workspace_tool.registry.table import RegistryAction
    from workspace_tool.schema.operation import Action, recorded

    if adopted:
        return str(RegistryAction.ADOPT)
    word = recorded(Action(action))
    return str(Action.CURRENT) if word is RegistryAction.REGISTER else str(word)


# ------------------------------------------------------------------------------ status
def print_fleet_summary(summary: dict[str, Any]) -> None:
    """`status` with no ids: counts by state and revision, then missing schemas, orphans, failures."""
    counts = [{"state": k, "schemas": v} for k, v in summary["counts"].items() if v]
    click.echo(f"{summary['total']} project(s); head is {summary['head']}")
    if counts:
        click.echo(table(counts, ["state", "schemas"]))
        click.echo()
        click.echo(table(summary["revisions"], ["revision", "state", "schemas"]))
    if summary["nodes"]:  # a distributed database: the node holding each schema
        click.echo()
        click.echo(table(summary["nodes"], ["node", "schemas"]))
    for key, title, columns in (
        ("missing", "Registered, schema missing", ["project_id", "schema", "registry_revision"]),
        ("orphans", "Project schemas not in the registry (orphans)", ["project_id", "schema", "revision"]),
        ("failed", "Failed on the last run", ["project_id", "schema", "revision", "last_error"]),
    ):
        if summary[key]:
            click.echo(f"\n{title}:")
            click.echo(table(summary[key], columns))
    spares = summary.get("spares") or {}
    if any(spares.values()):
        counted = ", ".join(f"{n} {state}" for state, n in spares.items() if n)
        click.echo(f"\nWarm pool (spare schemas, no project's): {counted} (workspace-tool pool status)")


# ------------------------------------------------------------------------------ fleet runs
def duration_text(seconds: float) -> str:
    """'42s', '3m05s', '2h07m': an ETA as a person reads it."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class ProgressPrinter:
    """done/total, failures, rate and ETA on stderr: a bar redrawn in place on a terminal; otherwise (a log
    file, CI) a plain line every ``interval_s`` seconds and at every 10% done, plus one per failure.

    The rate and the ETA count from the start event (the schemas to migrate are known then), not from the
    start of the run: the registry bootstrap and the fleet read before it are no part of the migrating, and
    counting them made the rate too low and the ETA too long, by as much as the read took. No ETA is shown
    before ``eta_after`` schemas are done (one or two results say little of the rate). The times are the
    events' own (``Progress.elapsed_s``), so a test drives the printer with events, not with a clock."""

    STEPS = 10  # a plain line at every 10% done

    def __init__(
        self, stream: TextIO, *, tty: bool | None = None, width: int = 30, interval_s: float = 5.0, eta_after: int = 5
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.width = width
        self.interval_s = interval_s
        self.eta_after = eta_after
        self._began: float | None = None  # elapsed_s of the start event
        self._last: float | None = None  # elapsed_s of the last plain line
        self._step = 0  # the last 10% step a plain line was printed at
        self._drawn = False
        self._stopped = False

    def __call__(self, event: Progress) -> None:
        from workspace_tool.fleet import FAILED, StopReason

        result = event.result
        if result is not None and result.status == FAILED:
            self._clear()
            self.stream.write(f"[{event.done}/{event.total}] {result.schema} failed: {result.error}\n")
        if event.stopped is not None and not self._stopped and event.done < event.total:
            self._clear()
            lost = event.stop_reason == StopReason.CONNECTION_LOST
            advice = ": rerun when the database is back" if lost else ""
            self.stream.write(f"Stopping: {event.stopped}; starting no more schemas{advice}\n")
            self._stopped = True
        if event.result is None:
            self._began = self._last = event.elapsed_s
            if event.total:
                canary = f": a canary of {event.canary} first" if event.canary else ""
                self.stream.write(f"{event.total} schema(s) to migrate{canary}\n")
        elif self.tty:
            self._clear()
            self.stream.write(self._line(event, bar=True))
            self._drawn = True
        elif self._due(event):
            self.stream.write(self._line(event, bar=False) + "\n")
            self._last = event.elapsed_s
        self.stream.flush()

    def _due(self, event: Progress) -> bool:
        """A plain line now: the last one, a new 10% step, or ``interval_s`` since the last line."""
        step = self.STEPS * event.done // event.total if event.total else self.STEPS
        if event.done == event.total or step > self._step:
            self._step = step
            return True
        return self._last is None or event.elapsed_s - self._last >= self.interval_s

    def _line(self, event: Progress, *, bar: bool) -> str:
        began = self._began if self._began is not None else 0.0
        running = max(event.elapsed_s - began, 0.0)
        rate = event.done / running if running > 0 else 0.0
        eta = "-"
        if event.done == event.total:
            eta = "0s"
        elif event.done >= self.eta_after and rate > 0:
            eta = duration_text((event.total - event.done) / rate)
        text = f"{event.done}/{event.total} done, {event.failed} failed, {rate:.1f}/s, ETA {eta}"
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


def print_fleet_report(report: FleetReport, as_json: bool, next_command: str | None = None) -> None:
    """Counts by stage (for a staged run), counts and timings by status, then each failed schema with its
    error; on stderr the totals, the selection, where the run stopped, and the command that continues it."""
    from workspace_tool.fleet import FAILED, GONE, OK, SKIPPED

    if report.selection is not None and not report.results:  # one line says it all
        if as_json:
            sys.stdout.write(to_json(report.as_dict()) + "\n")
        note(f"{_selected(report)}: nothing to do; nothing was changed")
        return
    if as_json:
        data = report.as_dict()
        if next_command is not None:
            data["next_command"] = next_command
        sys.stdout.write(to_json(data) + "\n")
        return
    staged = report.staged()
    if staged:
        stages = [{**report.counts(s.stage), **vars(s), "ran": "yes" if s.ran else "no"} for s in report.stages]
        emit(stages, ["stage", "schemas", "ran", "ok", "failed", "skipped", "max_failures"], as_json=False)
        sys.stdout.write("\n")
    rows = []
    for status in (OK, FAILED, SKIPPED, GONE):
        results = report.with_status(status)
        timed = [r.ms for r in results if r.ms]
        rows.append(
            {
                "status": status,
                "schemas": len(results),
                "median_ms": _median(timed) if timed else None,
                "max_ms": max(timed) if timed else None,
            }
        )
    emit(rows, ["status", "schemas", "median_ms", "max_ms"], as_json=False)
    if report.failed:
        sys.stdout.write("\n")
        emit(
            [r.as_dict() for r in report.failed],
            [
                "project_id",
                "schema",
                *(["stage"] if staged else []),
                "from_revision",
                "to_revision",
                "attempts",
                "error",
            ],
            as_json=False,
        )
    gone = f", {len(report.gone)} gone (dropped since the run read them)" if report.gone else ""
    note(
        f"{report.operation}{_to(report)}: {report.counts()[OK]} ok, "
        f"{len(report.failed)} failed, {report.counts()[SKIPPED]} skipped{_skipped_detail(report)}{gone}"
        f" in {report.elapsed_ms / 1000:.2f}s with {report.jobs} jobs ({report.executor})"
    )
    for line in _run_notes(report, next_command):
        note(line)


def _median(values: Sequence[float]) -> float:
    """statistics.median's value, without its import (with fractions': 3-5 ms of each fleet command's
    start-up)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _to(report: FleetReport) -> str:
    """' to REV' for a migration; nothing for a run that migrates nothing (drop, exec)."""
    return f" to {report.target or 'base'}" if report.migrates else ""


def _run_notes(report: FleetReport, next_command: str | None) -> list[str]:
    """What the summary line doesn't say: the selection, a random order's seed, the stage the run stopped
    in, the command that goes on after --canary-only, and what happened to the warm pool's spares."""
    from workspace_tool.fleet import Order, Stage

    notes = []
    if report.selection is not None:
        notes.append(_selected(report))
    if report.order == Order.RANDOM:
        notes.append(f"Started in random order, seed {report.seed} (--seed {report.seed} repeats it)")
    if report.staged() and report.stopped_stage is not None and next_command is None:
        main_left = report.stopped_stage == Stage.CANARY
        notes.append(
            f"Stopped in the {report.stopped_stage} stage: {report.stopped}"
            + ("; the main stage was not started" if main_left else "")
        )
    canary = next((s for s in report.stages if s.stage == Stage.CANARY and not s.schemas), None)
    empty = canary is not None and canary.already_at_target > 0  # a rerun of a canary named by id
    at_target = canary.already_at_target if canary is not None else 0
    nothing_to_canary = f"The canary's {at_target} schema(s) are already at the target: nothing to canary"
    if next_command is not None:
        passed = f"{nothing_to_canary}." if empty else "The canary passed."
        notes.append(f"{passed} To go on with the other {len(report.not_started())} schema(s), run:")
        notes.append(f"  {next_command}")
    elif empty and any(s.stage == Stage.MAIN and s.ran for s in report.stages):
        notes.append(f"{nothing_to_canary}; the main stage went on")
    if report.pool is not None:
        notes.append(_pool_line(report.pool))
    return notes


def _selected(report: FleetReport) -> str:
    """'Selected 4 of 12 project(s): state behind; id matching acme-*': what the selection took, of how many."""
    assert report.selection is not None
    chosen = report.selection
    criteria = [f"state {', '.join(chosen['states'])}"] if chosen["states"] else []
    criteria += [f"id matching {' or '.join(chosen['match'])}"] if chosen["match"] else []
    criteria += [f"one of {len(chosen['ids'])} listed ids"] if chosen["ids"] is not None else []
    selected = len(report.results)
    return f"Selected {selected} of {selected + report.not_selected} project(s): {'; '.join(criteria)}"


def _pool_line(followed: dict[str, Any]) -> str:
    """After upgrade --all: what happened to the warm pool's spares (spares.follow)."""
    if "error" in followed:
        return f"Warm pool: spares behind head not replaced: {followed['error']}"
    return (
        f"Warm pool: {followed['dropped']} spare(s) behind head dropped, {followed['built']} built; "
        f"{followed['ready']} ready at head"
    )


def _skipped_detail(report: FleetReport) -> str:
    """Which skipped schemas another run moved, and which this run did not start, and why."""
    from workspace_tool.fleet import SkipReason

    parts = []
    if moved := len(report.moved_by_another_run()):
        parts.append(f"{moved} {SkipReason.MOVED_BY_ANOTHER_RUN.note()}")
    if not_started := len(report.not_started()):
        parts.append(f"{not_started} not started: {report.stopped}")
    return f" ({'; '.join(parts)})" if parts else ""


def print_sql(scripts: list[SchemaSQL], as_json: bool) -> None:
    """`--sql`: each schema's script on stdout, then what would change (and why not) on stderr."""
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
    note(f"{with_sql} schema(s) would change; nothing was changed.")
    for why, count in notes.items():
        note(f"{count} schema(s): {why}")


def print_drift_report(report: CheckReport, as_json: bool) -> None:
    """`check`: one line per distinct difference (a problem, in a state), with how many schemas have it and
    the first few of them (every one with -v), the most common first; JSON: every schema in full."""
    if as_json:
        sys.stdout.write(to_json(report.as_dict()) + "\n")
    elif report.registry or report.schemas:
        groups: dict[tuple[str, str], list[str]] = {}
        for schema in report.failing:
            for problem in schema.problems:
                groups.setdefault((str(schema.state), problem), []).append(schema.schema)
        shown = None if verbosity() else SHOWN_IDS
        for (state, problem), schemas in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            click.echo(f"{len(schemas)} schema(s), {state}: {problem} ({few(schemas, shown=shown)})")
        spares = f" and {len(report.spares)} spare(s)" if report.spares else ""
        gone = f"; {len(report.gone)} dropped while check ran (not a problem)" if report.gone else ""
        differ = f"{len(report.failing)} differ, in {len(groups)} distinct difference(s)"
        note(
            f"{len(report.schemas) - len(report.gone)} schema(s){spares} checked against head {report.head}: "
            + ("all match" if report.ok else differ)
            + gone
        )
    if not report.registry:
        note(NO_REGISTRY)


# ------------------------------------------------------------------------------ the chain
def print_verification(report: VerificationReport, as_json: bool) -> None:
    """`verify-fast-path`: one row per range, then the differences of those that differ."""
    rows = [c.as_dict() for c in report.checks]
    if as_json:
        click.echo(
            to_json(
                {"head": report.head, "fingerprint": report.fingerprint, "identical": report.identical, "ranges": rows}
            )
        )
        return
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
    note(verdict)


def print_lint_report(report: LintReport, as_json: bool) -> None:
    """`lint`: one line per finding on stdout; what squawk could not check, and the summary, on stderr."""
    from workspace_tool.chain import display_path

    if as_json:
        click.echo(to_json(report.as_dict()))
        return
    for finding in report.findings:
        click.echo(str(finding))
    for unchecked in report.squawk_run.unchecked if report.squawk_run else ():
        note(f"{display_path(unchecked.revision_path)}: not checked by squawk: {unchecked.reason}")
    note(lint_summary(report))


def lint_summary(report: LintReport) -> str:
    from workspace_tool.chain.squawk import IGNORE_ATTRIBUTE

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
