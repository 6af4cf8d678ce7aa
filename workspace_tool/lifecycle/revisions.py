"""The Alembic verbs a DBA expects, per project: `history`, `heads`, `show REV` (the chain), `current
[ID...]` (the projects' revisions) and `stamp ID REV` (set a project's version row without running anything,
recorded in the registry as a stamp)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine, text

from workspace_tool import registry, transactions
from workspace_tool.chain import Chain
from workspace_tool.chain.plan import Path
from workspace_tool.dberrors import translating
from workspace_tool.errors import ConfigurationError, WorkspaceNotFound
from workspace_tool.lifecycle.errors import LifecycleRefused
from workspace_tool.registry import known as cache
from workspace_tool.registry.table import RegistryAction
from workspace_tool.schema.state import lock_and_read_state, version_table
from workspace_tool.sql import DEFAULT_LOCK_TIMEOUT_MS


@dataclass(frozen=True)
class RevisionInfo:
    revision: str
    down_revision: str | None
    message: str
    is_head: bool
    runs_outside_transaction: bool
    renders_offline: bool
    path: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def revision_info(chain: Chain, revision: str) -> RevisionInfo:
    script = chain.script.get_revision(revision)
    assert script is not None
    down = script.down_revision
    return RevisionInfo(
        revision,
        down if isinstance(down, str) or down is None else ",".join(down),
        (script.doc or "").strip().splitlines()[0] if script.doc else "",
        revision == chain.head,
        chain.runs_outside_transaction(revision),
        chain.renders_offline(revision),
        str(script.path),
    )


def history(chain: Chain) -> list[RevisionInfo]:
    """Every revision of the chain, head first (as `alembic history` lists them)."""
    return [revision_info(chain, r) for r in reversed(chain.revisions)]


def heads(chain: Chain) -> list[RevisionInfo]:
    return [revision_info(chain, chain.head)]


def show(chain: Chain, revision: str) -> tuple[RevisionInfo, str]:
    """One revision (a full or partial id, or 'head') and the SQL it compiles to (its upgrade from the
    revision before it; empty for a revision that runs online)."""
    resolved = chain.resolve(revision)
    if resolved is None:
        raise ConfigurationError(f"unknown revision {revision!r}: show takes a revision of the chain, or head")
    info = revision_info(chain, resolved)
    sql = chain.compile(info.down_revision, resolved) if info.renders_offline else ""
    return info, sql


def stamp(
    engine: Engine, chain: Chain, project_id: str, revision: str, *, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
) -> tuple[str | None, str | None]:
    """Set ``project_id``'s version row to ``revision`` ('head', 'base', a full or partial id) without
    running any revision, under its lock, in one transaction with its registry row (last_action 'stamp',
    status ready at that revision). Returns (the revision it was at, the one it is at now). The schema's
    tables are not changed: a stamp says they already are as that revision leaves them."""
    schema = chain.namespace.schema_for(project_id)
    target = chain.resolve(revision)
    with translating(engine.url, schema), transactions.connect(engine) as conn:
        flavor = registry.bootstrap(conn, chain.namespace)
        with conn.begin():
            state = lock_and_read_state(conn, project_id, schema, flavor, lock_timeout_ms, chain.namespace)
            if not state.exists:
                raise WorkspaceNotFound(project_id, schema)
            if not state.has_version_table:
                raise LifecycleRefused(f"{schema} has no alembic_version: not a schema workspace-tool made")
            if state.version == target:
                raise LifecycleRefused(f"{project_id} is at {target or 'base'} already: nothing was changed")
            conn.execute(text(f"DELETE FROM {version_table(schema)}"))
            if target is not None:
                conn.execute(text(f"INSERT INTO {version_table(schema)} (version_num) VALUES (:v)"), {"v": target})
            upsert = registry.upsert_sql(project_id, schema, target, RegistryAction.STAMP, str(Path.NONE))
            conn.execute(text(chain.namespace.sql(upsert)))
    cache.invalidate(cache.database_key(engine.url, chain.config_path), [project_id])
    return state.version, target
