"""How many connections a run may use: ``--jobs`` against what the engine's pool can hand out at once.

A run that wants more connections than the pool gives would wait for them and fail schema after schema
(``QueuePool limit ... reached``): it is refused up front instead, before anything is touched.
"""

from __future__ import annotations

import os

from sqlalchemy import Engine, pool

from workspace_tool.errors import ConfigurationError


def default_jobs() -> int:
    """Two connections per core: while one waits on the server, the other has work."""
    return max(2, min(16, 2 * (os.cpu_count() or 1)))


def connections_needed(jobs: int) -> int:
    """The most connections a run holds at once from the engine's pool: the planning connection, held
    while ``jobs`` connections read the fleet's versions, then one per job (a thread each)."""
    return jobs + 1


def pool_capacity(engine: Engine) -> int | None:
    """How many connections the engine's pool can hand out at once; None when it has no limit."""
    engine_pool = engine.pool
    if isinstance(engine_pool, pool.QueuePool):  # also AsyncAdaptedQueuePool
        overflow = int(getattr(engine_pool, "_max_overflow", -1))
        return None if overflow < 0 else engine_pool.size() + overflow
    if isinstance(engine_pool, (pool.StaticPool, pool.AssertionPool)):
        return 1  # one connection, shared or checked out at a time
    return None  # NullPool, SingletonThreadPool: a new connection per checkout or per thread


def spare_jobs(engine: Engine, wanted: int) -> int:
    """``wanted``, or as many as the engine's pool serves besides one connection in use: 0 for a pool of
    one (read-only commands then do everything on that one)."""
    capacity = pool_capacity(engine)
    return wanted if capacity is None else max(0, min(wanted, capacity - 1))


def check_jobs(engine: Engine, jobs: int | None) -> int:
    """The number of jobs to run (``jobs``, else the default within what the pool allows); a
    ConfigurationError, before anything is touched, when the engine's pool can't serve them."""
    capacity = pool_capacity(engine)
    if jobs is None:
        jobs = default_jobs() if capacity is None else max(1, min(default_jobs(), capacity - 1))
    if jobs < 1:
        raise ConfigurationError("--jobs must be at least 1")
    needed = connections_needed(jobs)
    if capacity is not None and capacity < needed:
        raise ConfigurationError(
            f"{jobs} jobs need {needed} connections at once (one per job and one to plan the run) but the "
            f"engine's pool ({type(engine.pool).__name__}) gives at most {capacity}: use fewer jobs (--jobs), or "
            f"create the engine with pool_size + max_overflow >= {needed}; nothing was changed"
        )
    return jobs
