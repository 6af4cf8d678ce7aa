"""-v/--verbose and -q/--quiet: where the library's log goes (stderr, with the URL's passwords scrubbed), and
the CLI's own messages, which -q silences. Data stays on stdout whatever the verbosity.

    (default)  warnings and errors
    -v         + what ran for each schema (path, from -> to, how it was sent, timings), retries, batch
               reads, the registry's bootstrap, plans compiled
    -vv        + the SQL: SQLAlchemy's statements (sqlalchemy.engine), Alembic's, and each batch sent on the
               raw driver (the fleet's one-round-trip transactions)
    -q         no progress and no messages on stderr: only warnings and errors
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TextIO

import click

FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
QUIET = "workspace_tool.quiet"  # in the root context's meta: -q was given
VERBOSE = "workspace_tool.verbose"  # in the root context's meta: how many -v were given
LOGGING = "workspace_tool.logging"  # in the root context's meta: configure() ran
# logger -> its level at each verbosity (0 = default; the last entry holds for more -v)
LEVELS = {
    "workspace_tool": (logging.WARNING, logging.INFO, logging.DEBUG),
    "sqlalchemy.engine": (logging.WARNING, logging.WARNING, logging.INFO),
    "alembic": (logging.WARNING, logging.WARNING, logging.INFO),
}


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record comes (click's test runner swaps it), with the
    secrets of the URL in use taken out of every line."""

    def __init__(self, secrets: Callable[[], list[str]]) -> None:
        logging.Handler.__init__(self)
        self.secrets = secrets

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler's own assignments: the stream is always sys.stderr
        pass

    def format(self, record: logging.LogRecord) -> str:
        from workspace_tool.urls import redact_text

        return redact_text(super().format(record), *self.secrets())


def configure(ctx: click.Context, secrets: Callable[[], list[str]]) -> None:
    """Send log records to stderr at the verbosity asked for so far (-v before the command's name), until
    the command ends; a -v after it raises the levels when it is parsed (``more_verbose``)."""
    handler = StderrHandler(secrets)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in LEVELS}
    _set_levels(verbosity())
    root.addHandler(handler)

    def restore() -> None:
        root.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)

    ctx.find_root().meta[LOGGING] = True
    ctx.call_on_close(restore)


def _set_levels(verbose: int) -> None:
    for name, levels in LEVELS.items():
        logging.getLogger(name).setLevel(levels[min(verbose, len(levels) - 1)])


def _root_meta() -> dict[str, object]:
    return click.get_current_context().find_root().meta


def more_verbose(count: int) -> None:
    """-v given ``count`` times (before or after the command's name: they add up)."""
    meta = _root_meta()
    meta[VERBOSE] = verbosity() + count
    _refuse_both()
    if LOGGING in meta:  # the handler is in place: the levels follow now
        _set_levels(verbosity())


def be_quiet() -> None:
    """-q (before or after the command's name)."""
    _root_meta()[QUIET] = True
    _refuse_both()


def _refuse_both() -> None:
    if verbosity() and quiet():
        raise click.UsageError("-v/--verbose and -q/--quiet don't go together")


def verbosity() -> int:
    """How many -v the command line holds (0 without one)."""
    ctx = click.get_current_context(silent=True)
    value = ctx.find_root().meta.get(VERBOSE, 0) if ctx is not None else 0
    return value if isinstance(value, int) else 0


def quiet() -> bool:
    """-q was given to the command running."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and bool(ctx.find_root().meta.get(QUIET, False))


def note(message: str) -> None:
    """A message for the user on stderr (what was done, where, what next); -q silences it."""
    if not quiet():
        click.echo(message, err=True)
