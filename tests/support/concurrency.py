"""Concurrency: ensure from several processes at once, and sessions held on advisory locks."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from support.chains import ALEMBIC_INI


def _process_worker(url: str, ini: str, project_id: str, barrier: Any, out: Any) -> None:
    from sqlalchemy.pool import NullPool

    from workspace_tool import WorkspaceManager as Manager

    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        mgr = Manager(engine, ini)
        barrier.wait()
        result = mgr.ensure_detailed(project_id)
        out.put((project_id, result.schema, None, str(result.action)))
    except Exception as exc:  # reported to the parent, which asserts there is none
        out.put((project_id, None, f"{type(exc).__name__}: {exc}", None))
    finally:
        engine.dispose()


def ensure_in_processes(
    url: str, project_ids: list[str], ini: Path = ALEMBIC_INI, *, actions: list[str] | None = None
) -> list[tuple[str, str | None, str | None]]:
    """``ensure`` of each id in its own spawned process, all released together: sorted (project id, schema,
    error) per process; what each ensure did is appended to ``actions`` when given."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(project_ids))
    out = ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(url, str(ini), p, barrier, out)) for p in project_ids]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    if actions is not None:
        actions.extend(sorted(str(r[3]) for r in results))
    return sorted(((r[0], r[1], r[2]) for r in results), key=lambda r: (r[0], str(r[1])))


WAIT = 30.0  # seconds: generous bounds on waits that normally take milliseconds
GATE = 774_211  # advisory lock key the "slow" revision waits on


class Gate:
    """Holds the advisory lock; ``wait_for(n)`` returns once n backends are blocked on it."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.conn = engine.connect()
        self.conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": GATE})
        self.conn.commit()

    def waiting(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(  # type: ignore[arg-type]
                    sa.text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                        "AND objid = :k AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                    ),
                    {"k": GATE},
                ).scalar()
            )

    def wait_for(self, n: int, limit: float = 60.0) -> int:
        deadline = time.monotonic() + limit
        seen = self.waiting()
        while seen < n and time.monotonic() < deadline:
            time.sleep(0.02)
            seen = self.waiting()
        return seen

    def open(self) -> None:
        self.conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": GATE})
        self.conn.commit()
        self.conn.close()


class Victim(threading.Thread):
    """Runs ``work`` and keeps what it raised."""

    def __init__(self, work: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.error: BaseException | None = None
        self.result: object = None

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.join(WAIT)
        assert not self.is_alive()


def waiting_on_advisory(admin: sa.Connection, count: int = 1, *victims: Victim) -> list[int]:
    """Pids of sessions in this database blocked on an advisory lock; waits until there are ``count``."""
    deadline = time.monotonic() + WAIT
    while True:
        admin.execute(sa.text("SELECT pg_stat_clear_snapshot()"))  # inside a transaction it is cached
        pids = list(
            admin.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND wait_event_type = 'Lock' AND wait_event = 'advisory' ORDER BY pid"
                )
            ).scalars()
        )
        if len(pids) >= count:
            return pids
        assert time.monotonic() < deadline, f"only {len(pids)} sessions blocked, expected {count}"
        for victim in victims:
            assert victim.is_alive(), f"finished before blocking: {victim.error!r}"
        time.sleep(0.01)
