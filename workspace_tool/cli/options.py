"""Options more than one command takes, and the DURATION parameter type."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

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


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Write JSON to stdout instead of a table.")(f)


def jobs_option(f: F) -> F:
    limit = click.IntRange(min=1)
    return click.option("--jobs", "-j", type=limit, help="Parallel connections (default: 2 per core).")(f)


def adopt_option(f: F) -> F:
    return click.option(
        "--adopt",
        is_flag=True,
        help="Run the chain into an existing schema that holds tables but no alembic_version (refused "
        "otherwise) and register it.",
    )(f)


def fleet_options(f: F) -> F:
    """What upgrade and downgrade share: which projects, how many at once, what to do on failure."""
    options = [
        click.argument("project_ids", nargs=-1),
        click.option("--all", "all_", is_flag=True, help="Every project in the registry."),
        jobs_option,
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
        click.option("--sql", "show_sql", is_flag=True, help="Print each schema's SQL and change nothing."),
        json_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f
