"""The warm pool: spare schemas already at head, so a new project's first ensure renames one instead of
building its tables (1 to 3 ms instead of 20 to 30 here). "Pool" elsewhere in the code is the connection
pool; the CLI keeps the command group ``pool`` and alembic.ini its ``workspace_pool_*`` settings.

A spare is built by the chain's usual plan (``run_plan``: compiled SQL, Alembic online where it must) under
a name outside the project namespace (``workspace_spare_<hex>``), and recorded in the registry's
``spare_schemas`` with its revision, the fingerprint of the chain that built it and the digest of the
role's default privileges it was built under, in the same transaction (a chain with a revision that can't
run in a transaction: in parts, recorded first as not ready, made ready by its last part). A project's
first ensure claims one in its own schema transaction (a CLAIM step: see schema/plan.py and
``schema.migrate.claims``): one statement renames a ready spare at the current head of this very chain,
owned by the current role and built under its default privileges as they are now, and writes the registry
row; with none, the schema is built as before, in the same transaction under the same lock.

Releases: a chain at its head (a release of the application) that fills the pool records it in the
registry's ``pool_releases``; spares of another release that filled the pool within
``workspace_pool_grace`` seconds are kept for it, and spares at a revision this chain doesn't know (a newer
release's) are never dropped by it: during a rolling deploy both releases are served from the pool.

The modules:

- ``settings``: the pool's size (``workspace_pool_size``, default 0 = off) and grace;
- ``store``: the registry's statements on spares and releases, and the one statement that claims a spare;
- ``contents``: what the pool holds and each spare's state (``pool status``);
- ``filling``: ``fill``, ``drain``, ``follow`` (``upgrade --all``) and ``build_spare``;
- ``check``: whether a chain's schemas can be renamed (``rename_and_scan``);
- ``refill``: the background ``Refiller`` a manager runs after it creates a schema.

The names below are importable from ``workspace_tool.spares`` itself (loaded on first use: ``schema/plan.py``
imports ``spares.store`` without loading the rest).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workspace_tool.spares.check import rename_and_scan
    from workspace_tool.spares.contents import PoolStatus, Release, Spare, read_releases, read_spares, status
    from workspace_tool.spares.filling import DROP_BATCH, FillReport, build_spare, check_chain, drain, fill, follow
    from workspace_tool.spares.refill import Refiller
    from workspace_tool.spares.settings import (
        DEFAULT_GRACE_S,
        GRACE_OPTION,
        POOL_SIZE_OPTION,
        configured_size,
        release_grace,
        resolve_size,
    )

_LAZY = {
    "rename_and_scan": "check",
    "DROP_BATCH": "filling",
    "FillReport": "filling",
    "build_spare": "filling",
    "check_chain": "filling",
    "drain": "filling",
    "fill": "filling",
    "follow": "filling",
    "Refiller": "refill",
    "DEFAULT_GRACE_S": "settings",
    "GRACE_OPTION": "settings",
    "POOL_SIZE_OPTION": "settings",
    "configured_size": "settings",
    "release_grace": "settings",
    "resolve_size": "settings",
    "PoolStatus": "contents",
    "Release": "contents",
    "Spare": "contents",
    "read_releases": "contents",
    "read_spares": "contents",
    "status": "contents",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'workspace_tool.spares' has no attribute {name!r}")
    return getattr(importlib.import_module(f"workspace_tool.spares.{module}"), name)


__all__ = [
    "DEFAULT_GRACE_S",
    "DROP_BATCH",
    "GRACE_OPTION",
    "POOL_SIZE_OPTION",
    "FillReport",
    "PoolStatus",
    "Refiller",
    "Release",
    "Spare",
    "build_spare",
    "check_chain",
    "configured_size",
    "drain",
    "fill",
    "follow",
    "read_releases",
    "read_spares",
    "release_grace",
    "rename_and_scan",
    "resolve_size",
    "status",
]
