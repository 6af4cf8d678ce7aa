"""Connections that walk the fleet are closed and opened again every so many schemas, so that no server
backend keeps the catalog caches of the whole fleet.

A PostgreSQL backend keeps, in its private memory and for its whole life, a cache entry (relcache,
syscache) for every relation it has touched, and malloc keeps what the planning of large statements took:
measured on the example chain, about 31 KB per schema whose version a backend reads and 13 KB per schema
it migrates; `upgrade --all --jobs 2` over 8,000 schemas grew its largest backend to 72 MB, gigabytes
for a fleet of 100,000 (see the README, *Server memory*; benchmarks/fleet_memory.py). So every
connection that touches schema after schema (a fleet run's workers, the batched version and catalog
reads of `status`, `check` and planning, the warm pool's builders) counts the schemas its backend has
touched, and after ``recycle_after`` of them the connection is detached from the engine's pool and
closed: the backend exits, its memory goes back to the system, and the next use connects anew. The count
is kept with the DBAPI connection (``PoolProxiedConnection.info``), so it carries across checkouts from
the pool: a connection that read versions and then migrates schemas counts both.

By count rather than by the backend's own ``pg_backend_memory_contexts``: reading that view needs
superuser or ``pg_read_all_stats`` (a migrating role usually has neither), its columns differ between
server versions, and it misses what malloc keeps after a large statement; a count needs no query and
bounds the memory of every backend the same way: 35 MB at most with the default over 8,000 schemas,
for a cost within the noise of the run (see the README for why 1000 and not 500).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from workspace_tool.errors import ConfigurationError

if TYPE_CHECKING:
    from workspace_tool.chain import Chain

RECYCLE_OPTION = "workspace_recycle_after"
# Schemas a backend may touch before its connection is replaced. Measured on the example chain (7 tables and
# 16 indexes, 10 TOAST relations): see the README, *Server memory*.
DEFAULT_RECYCLE_AFTER = 1000
_TOUCHED = "workspace_tool.schemas_touched"  # key in the DBAPI connection's info: schemas touched so far
log = logging.getLogger(__name__)


def configured(chain: Chain) -> int:
    """``workspace_recycle_after`` in the chain's alembic.ini (default DEFAULT_RECYCLE_AFTER; 0: never)."""
    return chain.whole_number(
        RECYCLE_OPTION,
        DEFAULT_RECYCLE_AFTER,
        "it must be a whole number of schemas a connection touches before it is replaced by a new one "
        f"({DEFAULT_RECYCLE_AFTER} by default, 0 for never)",
    )


def resolve(chain: Chain, recycle_after: int | None) -> int:
    """``recycle_after`` (checked), or the configured value when None."""
    if recycle_after is None:
        return configured(chain)
    if recycle_after < 0:
        raise ConfigurationError(
            f"--recycle-after is a number of schemas, 0 (never) or more; got {recycle_after}; nothing was changed"
        )
    return recycle_after


def count(conn: Connection, schemas: int) -> None:
    """Count ``schemas`` more schemas touched by ``conn``'s backend (in a transaction or not)."""
    if not conn.closed and not conn.invalidated:
        info = conn.connection.info
        info[_TOUCHED] = int(info.get(_TOUCHED, 0)) + schemas


def touched(conn: Connection) -> int:
    """How many schemas ``conn``'s backend has touched, as counted."""
    return 0 if conn.closed or conn.invalidated else int(conn.connection.info.get(_TOUCHED, 0))


def due(conn: Connection, recycle_after: int) -> bool:
    """Once ``conn``'s backend has touched ``recycle_after`` schemas (0: never), detach the connection
    from its pool, so that closing it ends the backend: True, and the caller closes it (and connects
    again if it has more to do). Call it between transactions."""
    return _due(conn, touched(conn), recycle_after)


def one_more(conn: Connection, recycle_after: int) -> bool:
    """``count(conn, 1)`` then ``due(conn, recycle_after)`` in one look at the connection: what a connection
    that walks the fleet calls after each schema (between transactions). True: the caller closes it."""
    if conn.closed or conn.invalidated:
        return False
    info = conn.connection.info
    done = info[_TOUCHED] = int(info.get(_TOUCHED, 0)) + 1
    return _due(conn, done, recycle_after)


def _due(conn: Connection, done: int, recycle_after: int) -> bool:
    """``due`` for a backend that has touched ``done`` schemas."""
    if recycle_after <= 0 or done < recycle_after or conn.in_transaction():
        return False
    conn.connection.info.pop(_TOUCHED, None)
    conn.detach()
    log.debug("a connection touched %d schema(s): closing it, a new backend takes over", done)
    return True
