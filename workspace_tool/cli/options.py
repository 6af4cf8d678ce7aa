"""Options more than one command takes, and the DURATION parameter type."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from workspace_tool.cli import logs
from workspace_tool.cli.context import AppContext, CommandError

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


class LibraryDefault:
    """A default that is the library's own constant, read when an option needs it or its help is shown, so
    that loading the CLI doesn't load that library module."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __call__(self) -> Any:
        import importlib

        return getattr(importlib.import_module(self.module), self.name)

    def __str__(self) -> str:  # what --help shows as [default: ...]
        return str(self())


class AmountType(click.ParamType[str]):
    """N (schemas) or P% (of them), checked by the library's rule (workspace_tool.fleet.stages.Amount)."""

    name = "N|P%"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from workspace_tool.errors import ConfigurationError
        from workspace_tool.fleet.stages import Amount

        try:
            return str(Amount.parse(value))
        except ConfigurationError as exc:
            self.fail(str(exc), param, ctx)


class StatesType(click.ParamType[tuple[str, ...]]):
    """States as `status` writes them (at-head, behind, ...), comma-separated; the spellings before issue 22
    ('at head', 'ahead/unknown') and underscores are taken too."""

    name = "STATE[,STATE...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        from workspace_tool.schema.state import State

        if isinstance(value, tuple):
            return value
        states = []
        for word in str(value).split(","):
            try:
                states.append(str(State.parse(word)))
            except ValueError:
                self.fail(f"{word.strip()!r} is not a state: {', '.join(State)}", param, ctx)
        return tuple(states)


def split_ids(text: str) -> list[str]:
    """Project ids separated by newlines, spaces or commas; '#' starts a comment that runs to the line's end."""
    return [i for line in text.splitlines() for i in line.split("#", 1)[0].replace(",", " ").split()]


def read_text(path: str, option: str) -> str:
    """A file a command reads (``option`` names it in the error): its text, or a usage error if it can't be
    read or is not UTF-8 text."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeError) as exc:
        raise click.UsageError(f"{option} {path}: cannot read it ({exc.__class__.__name__}: {exc})") from None


def read_ids(path: str, option: str) -> list[str]:
    """The project ids in a file (split_ids); a usage error if it can't be read or lists none."""
    ids = split_ids(read_text(path, option))
    if not ids:
        raise click.UsageError(f"{option} {path}: the file lists no project id")
    return ids


def given(*names: str) -> list[str]:
    """Which of the current command's parameters ``names`` (as the command gets them) were given on the
    command line or in the environment, each as its option (``--jobs``, ``--fail-fast/--continue-on-error``;
    an argument as its name), in the command's order: for a mode that uses none of them to refuse them."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    wanted = set(names)
    shown = []
    for param in ctx.command.params:
        if param.name not in wanted or ctx.get_parameter_source(param.name) in (None, ParameterSource.DEFAULT):
            continue
        if isinstance(param, click.Option):
            longest = max(param.opts, key=len)
            shown.append("/".join([longest, *param.secondary_opts]))
        else:
            shown.append(param.human_readable_name)
    return shown


def output_options(f: F) -> F:
    """-v/--verbose and -q/--quiet, on the group and on every command: ``workspace-tool -q status`` and
    ``workspace-tool status -q`` mean the same (several -v add up; -v with -q is a usage error)."""

    def verbose(ctx: click.Context, param: click.Parameter, count: int) -> None:
        if count:
            logs.more_verbose(count)

    def quiet(ctx: click.Context, param: click.Parameter, given: bool) -> None:
        if given:
            logs.be_quiet()

    f = click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=quiet,
        help="No progress or messages on stderr: only warnings and errors.",
    )(f)
    return click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=verbose,
        help="Log to stderr what ran for each schema, with timings (-v); and the SQL sent (-vv). With "
        "`check`: every schema of each difference.",
    )(f)


YES = "workspace_tool.yes"  # in the root context's meta: --yes was given


def yes_option(f: F) -> F:
    """--yes/-y on a command that destroys something: it confirms, and without it ``confirm`` asks on a
    terminal and refuses otherwise."""

    def given(ctx: click.Context, param: click.Parameter, yes: bool) -> None:
        ctx.find_root().meta[YES] = ctx.find_root().meta.get(YES, False) or yes

    return click.option(
        "--yes",
        "-y",
        is_flag=True,
        expose_value=False,
        callback=given,
        help="Don't ask: confirm what the command destroys (needed when stdin is not a terminal).",
    )(f)


def on_a_terminal() -> bool:
    """Whether there is someone to ask: stdin is a terminal (not when it is closed or missing, as under cron)."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # closed
        return False


def confirm(what: str) -> None:
    """The rule of every command that destroys: go on with --yes; else ask on a terminal (no: exit 1, nothing
    changed); without a terminal, a one-line error, exit 1, nothing changed. ``what`` says what it destroys,
    as in "dropping project_a, project_b deletes all their data"."""
    if click.get_current_context().find_root().meta.get(YES, False):
        return
    if not on_a_terminal():
        raise CommandError(f"{what}: pass --yes to confirm (no terminal to ask on); nothing was changed")
    if not click.confirm(f"{what}. Go on?", default=False, err=True):
        raise CommandError("not confirmed; nothing was changed")


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Write JSON to stdout instead of a table.")(f)


def jobs_option(f: F) -> F:
    """--jobs/-j, given to the AppContext as soon as it is read: its engine, made later by whatever the
    command reads first, has a pool sized for that many jobs (AppContext.engine)."""

    def size_the_pool(ctx: click.Context, param: click.Parameter, jobs: int | None) -> int | None:
        app = ctx.find_object(AppContext)
        if app is not None:
            app.jobs = jobs
        return jobs

    limit = click.IntRange(min=1)
    return click.option(
        "--jobs", "-j", type=limit, callback=size_the_pool, help="Parallel connections (default: 2 per core)."
    )(f)


def recycle_option(f: F) -> F:
    return click.option(
        "--recycle-after",
        type=click.IntRange(min=0),
        metavar="N",
        help="Replace each connection by a new one after it touched N schemas, so that no server backend "
        "caches the whole fleet's catalog (0: never). Default: workspace_recycle_after in alembic.ini, else "
        "1000.",
    )(f)


def adopt_option(f: F) -> F:
    return click.option(
        "--adopt",
        is_flag=True,
        help="Run the chain into an existing schema that holds tables but no alembic_version (refused "
        "otherwise) and register it.",
    )(f)
