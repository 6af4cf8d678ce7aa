"""What every fleet command takes (upgrade, downgrade, drop, exec): the options (``fleet_options``: which
projects, how many at once, the stages, what to do on a failure, how each schema commits; drop's and exec's
``task_options`` leave --sql and --commit, which they refuse, out of their help), given to the command as
one ``FleetOptions``, and the one RunSpec they make (``FleetOptions.run_spec``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import click

from workspace_tool.cli.options import (
    AmountType,
    DurationType,
    LibraryDefault,
    StatesType,
    jobs_option,
    json_option,
    read_ids,
    recycle_option,
    split_ids,
)

if TYPE_CHECKING:
    from workspace_tool.fleet import RunSpec
    from workspace_tool.fleet.stages import Staging
    from workspace_tool.schema.operation import Operation


@dataclass(frozen=True)
class FleetOptions:
    """The fleet options as given on the command line (each field named as its click parameter)."""

    project_ids: tuple[str, ...]
    all_: bool
    jobs: int | None
    recycle_after: int | None
    fail_fast: bool | None
    lock_timeout: int
    retries: int
    show_sql: bool
    as_json: bool
    states: tuple[tuple[str, ...], ...]
    globs: tuple[str, ...]
    ids_from: str | None
    canary: str | None
    canary_ids: tuple[str, ...]
    canary_ids_from: str | None
    canary_only: bool
    order: str | None
    seed: int | None
    max_failures: str | None
    commit: str | None

    @property
    def selects(self) -> bool:
        """Whether a selector was given (--state, --match, --ids-from)."""
        return bool(self.states or self.globs or self.ids_from)

    def run_spec(self, operation: Operation, target: str = "head", *, adopt: bool = False) -> RunSpec:
        """These options as the RunSpec of a run of ``operation``; a usage error (exit 2) for a bad value or
        combination, before anything is read from the database.

        A migration (upgrade, downgrade) takes the named projects or --all, which the selectors narrow
        (--ids-from among them), and can show its SQL (--sql). A task (drop, exec: no revision runs) takes
        the named projects (the ids and those in --ids-from), those selected, or --all; the named ones are a
        selection too, so that one not in the fleet is refused before anything runs. Either fails fast by
        default when projects are named, and carries on otherwise."""
        from workspace_tool.fleet import RunSpec, Selection

        if operation.migrates:
            if bool(self.project_ids) == self.all_:
                raise click.UsageError("name the projects, or pass --all (not both)")
            project_ids = None if self.all_ else self.project_ids
            ids = read_ids(self.ids_from, "--ids-from") if self.ids_from else None
            named = not self.all_
        else:
            if self.show_sql:
                raise click.UsageError(f"--sql: {operation.name} runs no migration, there is no SQL to show")
            if self.commit is not None:
                raise click.UsageError(f"--commit: {operation.name} runs no migration, it commits as it always does")
            if self.all_ and (self.project_ids or self.selects):
                raise click.UsageError("--all takes every project: not with ids, --state, --match or --ids-from")
            if not (self.all_ or self.project_ids or self.selects):
                raise click.UsageError("name the projects, select them (--state, --match, --ids-from), or pass --all")
            project_ids = None
            ids = [*self.project_ids, *(read_ids(self.ids_from, "--ids-from") if self.ids_from else [])] or None
            named = ids is not None
        selection = (
            Selection(states=[s for given in self.states for s in given], match=self.globs, ids=ids)
            if self.states or self.globs or ids is not None
            else None
        )
        return RunSpec(
            target,
            project_ids,
            selection=selection,
            staging=self._staging(named),
            jobs=self.jobs,
            lock_timeout_ms=self.lock_timeout,
            retries=self.retries,
            recycle_after=self.recycle_after,
            adopt=adopt,
            dry_run=self.show_sql,
            commit=self.commit or "async",
        )

    def _staging(self, named: bool) -> Staging:
        """The stage options as the RunSpec's Staging, checked by the library's rules (a usage error if not)."""
        from workspace_tool.errors import ConfigurationError
        from workspace_tool.fleet.stages import Staging

        if self.max_failures is not None and self.fail_fast is not None:
            raise click.UsageError(
                "--max-failures and --fail-fast/--continue-on-error: pass one (--fail-fast is --max-failures 1, "
                "--continue-on-error sets no limit)"
            )
        canary_ids = [i for given in self.canary_ids for i in split_ids(given)]
        if self.canary_ids_from:
            canary_ids += read_ids(self.canary_ids_from, "--canary-ids-from")
        try:
            return Staging.parse(
                fail_fast=(named and self.max_failures is None) if self.fail_fast is None else self.fail_fast,
                max_failures=self.max_failures,
                canary=self.canary,
                canary_ids=canary_ids if self.canary_ids or self.canary_ids_from else None,
                canary_only=self.canary_only,
                order=self.order,
                seed=self.seed,
            )
        except ConfigurationError as exc:
            raise click.UsageError(str(exc)) from None


OPTION_NAMES = tuple(option.name for option in fields(FleetOptions))  # the fleet options' parameter names


def fleet_options(f: Callable[..., Any], *, migrates: bool = True) -> Callable[..., Any]:
    """The fleet options on a command, which gets them as one ``fleet: FleetOptions`` argument. A command
    that ``migrates`` not (drop, exec: a task) has --sql and --commit too, but not in its help: ``run_spec``
    refuses them."""
    names = OPTION_NAMES

    @functools.wraps(f)
    def command(*args: Any, **kwargs: Any) -> Any:
        given = FleetOptions(**{name: kwargs.pop(name) for name in names})
        return f(*args, fleet=given, **kwargs)

    for option in reversed(_OPTIONS):
        hidden = {_SQL: _HIDDEN_SQL, _COMMIT: _HIDDEN_COMMIT}.get(option, option)
        command = (option if migrates else hidden)(command)
    return command


def task_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The fleet options of a task (drop, exec), which runs no migration: --sql and --commit are refused, and
    not shown."""
    return fleet_options(f, migrates=False)


FILE = click.Path(exists=True, dir_okay=False, readable=True)
_SQL_HELP = "Print each selected schema's SQL and change nothing (the stage options play no part)."
_SQL = click.option("--sql", "show_sql", is_flag=True, help=_SQL_HELP)
_HIDDEN_SQL = click.option("--sql", "show_sql", is_flag=True, hidden=True, help=_SQL_HELP)
_COMMIT_CHOICE = click.Choice(["async", "durable"])
_COMMIT_HELP = (
    "How each schema's transaction commits. async (the default): without waiting for its WAL flush; the run "
    "waits once, for them all, before it reports, so what it reports done is as durable as with durable. A "
    "server crash during the run undoes, each whole, the schemas not flushed yet, which a rerun migrates. "
    "durable: each waits, as the server's synchronous_commit says."
)
_COMMIT = click.option("--commit", type=_COMMIT_CHOICE, help=_COMMIT_HELP)
_HIDDEN_COMMIT = click.option("--commit", type=_COMMIT_CHOICE, hidden=True, help=_COMMIT_HELP)
_OPTIONS: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    click.argument("project_ids", nargs=-1),
    click.option("--all", "all_", is_flag=True, help="Every project in the registry."),
    jobs_option,
    recycle_option,
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
        default=LibraryDefault("workspace_tool.fleet", "DEFAULT_RETRIES"),
        show_default=True,
        help="Retries, with backoff, of a schema whose lock wait timed out or whose connection was lost.",
    ),
    _SQL,
    _COMMIT,
    json_option,
    # the selection
    click.option(
        "--state",
        "states",
        type=StatesType(),
        multiple=True,
        help="Only projects in these states, as `status` shows them: behind, failed, at-head, empty, "
        "ahead, missing, orphan (comma-separated or repeated).",
    ),
    click.option("--match", "globs", metavar="GLOB", multiple=True, help="Only project ids matching GLOB (*, ?)."),
    click.option("--ids-from", type=FILE, metavar="FILE", help="Only the project ids in FILE (one a line)."),
    # the stages
    click.option(
        "--canary",
        type=AmountType(),
        help="Migrate N schemas (or P% of those to migrate) first, in --order; go on with the rest only if "
        "none of them failed.",
    ),
    click.option(
        "--canary-ids",
        metavar="IDS",
        multiple=True,
        help="The canary by project id (comma-separated or repeated): those of them still to migrate. When none "
        "is (a rerun: they are at the target already), there is nothing to canary: the command says so, then "
        "migrates the rest, or with --canary-only stops and prints the command that does.",
    ),
    click.option("--canary-ids-from", type=FILE, metavar="FILE", help="The canary's project ids from FILE."),
    click.option(
        "--canary-only",
        is_flag=True,
        help="Stop after the canary. upgrade and downgrade print the command that does the rest (with the --seed of "
        "a random order); drop and exec do not, since a rerun of exec would run again on the canary.",
    ),
    click.option(
        "--order",
        type=click.Choice(["name", "random"]),
        help="The order schemas start in (the canary is the first ones): by project id, or shuffled by --seed "
        "(a schema's place depends on the seed and its id only).",
    ),
    click.option("--seed", type=int, help="The seed of --order random (default: drawn, and printed)."),
    click.option(
        "--max-failures",
        type=AmountType(),
        help="Start no schema once N (or P% of the main stage's) schemas have failed; instead of "
        "--fail-fast (= 1) or --continue-on-error (no limit).",
    ),
]
