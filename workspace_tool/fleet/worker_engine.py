"""How a spawned worker process gets an engine like the caller's.

An Engine can't cross to another process (its pool holds sockets and locks), and most of what it was
built with can't be read back from it. So a worker builds its engine with:

* ``engine_factory``, when the caller gives one: a picklable callable returning an Engine (a module-level
  function, or ``functools.partial(sqlalchemy.create_engine, url, connect_args={...})``), called once in
  each worker;
* otherwise :class:`UrlEngine`: the engine's URL (password and query parameters included), its isolation
  level and its execution options.  Before any worker starts, that rebuilt engine (not connected) is
  compared with the caller's: ``connect_args``, a ``creator``, or an event listener (``connect``,
  ``do_connect``, ``checkout``, ``before_cursor_execute``, ...) that the rebuild doesn't have is refused
  with a ConfigurationError naming it, since the workers would silently run without it.

Keyword arguments that only change the dialect (``json_serializer``, ``executemany_mode``, ...) are not
detected: pass ``engine_factory`` if your revisions depend on them.
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, create_engine, pool
from sqlalchemy.engine.events import ConnectionEvents, DialectEvents
from sqlalchemy.pool.events import PoolEvents

from workspace_tool.errors import ConfigurationError

EngineFactory = Callable[[], Engine]

_EVENTS = (
    ("engine", ConnectionEvents),
    ("pool", PoolEvents),
    ("dialect", DialectEvents),
)


@dataclass(frozen=True)
class UrlEngine:
    """Rebuilds an engine from its URL, isolation level and execution options, with a NullPool (a worker
    holds one connection)."""

    url: str = field(repr=False)  # it holds the password
    isolation_level: str | None = None
    execution_options: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self) -> Engine:
        options: dict[str, Any] = {"poolclass": pool.NullPool}
        if self.isolation_level is not None:
            options["isolation_level"] = self.isolation_level
        engine = create_engine(self.url, **options)
        return engine.execution_options(**self.execution_options) if self.execution_options else engine


def for_workers(engine: Engine, engine_factory: EngineFactory | None) -> EngineFactory:
    """What each worker process calls to build its engine; a ConfigurationError, before anything runs,
    when that can't reproduce ``engine``."""
    factory: EngineFactory = engine_factory or UrlEngine(
        engine.url.render_as_string(hide_password=False),
        getattr(engine.dialect, "_on_connect_isolation_level", None),
        dict(engine.get_execution_options()),
    )
    try:
        pickle.dumps(factory)
    except Exception as exc:
        what = "engine_factory" if engine_factory else "the engine's execution options"
        raise ConfigurationError(
            f"executor='processes' can't send {what} to worker processes ({type(exc).__name__}: {exc}): use a "
            "module-level function or functools.partial of one"
        ) from None
    if engine_factory is not None:
        return engine_factory
    rebuilt = factory()
    try:
        lost = not_carried(engine, rebuilt)
    finally:
        rebuilt.dispose()
    if lost is not None:
        raise ConfigurationError(
            f"executor='processes' can't rebuild this engine in worker processes: it has {lost}, which its URL "
            "doesn't carry; pass engine_factory= (a picklable function that builds the engine, e.g. "
            "functools.partial(sqlalchemy.create_engine, url, connect_args={...})), or use executor='threads'"
        )
    return factory


def not_carried(engine: Engine, rebuilt: Engine) -> str | None:
    """What ``engine`` has that ``rebuilt`` lacks: connection arguments, a creator, event listeners."""
    if _connect_params(engine) != _connect_params(rebuilt):
        return "connect_args or a creator"
    mine, theirs = _listeners(engine), _listeners(rebuilt)
    for name, count in mine.items():
        if count != theirs.get(name, 0):
            return f"a {name!r} event listener"
    return None


def _connect_params(engine: Engine) -> dict[str, Any] | None:
    """The DBAPI connect() keywords of create_engine's own connect function; None for anything else
    (a creator of the caller's)."""
    try:
        params = inspect.getclosurevars(engine.pool._creator).nonlocals.get("cparams")
    except TypeError:
        return None
    return dict(params) if isinstance(params, Mapping) else None


def _listeners(engine: Engine) -> dict[str, int]:
    """Listener counts of every engine, pool and dialect event (SQLAlchemy's own included)."""
    targets = {"engine": engine, "pool": engine.pool, "dialect": engine.dialect}
    counts: dict[str, int] = {}
    for target, event_class in _EVENTS:
        dispatch = targets[target].dispatch
        for name, member in vars(event_class).items():
            if not name.startswith("_") and callable(member):
                counts[name] = counts.get(name, 0) + len(getattr(dispatch, name))
    return counts
