"""`status`: each project's schema, revision and state, and the fleet's counts, from the one reader
(workspace_tool.registry.inventory). Read-only."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection

from workspace_tool import flavor
from workspace_tool.chain import Chain
from workspace_tool.registry.inventory import VersionsReader, read_fleet
from workspace_tool.schema.state import State


@dataclass(frozen=True)
class ProjectStatus:
    project_id: str
    schema: str
    revision: str | None  # what the schema's alembic_version says; None when missing or empty
    registry_revision: str | None
    state: State
    registered: bool
    last_action: str | None = None
    last_duration_ms: float | None = None
    last_path: str | None = None
    last_error: str | None = None
    updated_at: dt.datetime | None = None
    node: str | None = None  # on a distributed database: host:port of the node holding the schema; else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_status(
    conn: Connection,
    chain: Chain,
    project_ids: Sequence[str] | None = None,
    versions_of: VersionsReader | None = None,
) -> list[ProjectStatus]:
    """Status of the given projects, or of every registered project plus orphan schemas. Read-only: with
    no registry yet (nothing provisioned), project schemas found are orphans. Versions are read on
    ``conn``, or by ``versions_of`` (e.g. ``read_versions_parallel`` over several connections). On a
    distributed database, the node holding each schema (``Flavor.read_nodes``)."""
    records = sorted(read_fleet(conn, project_ids, versions_of, chain.namespace), key=lambda r: r.project_id)
    nodes = flavor.read(conn).read_nodes(conn, chain.namespace.schema_like)
    return [
        ProjectStatus(
            project_id=r.project_id,
            schema=r.schema,
            revision=r.version,
            registry_revision=r.registry_revision,
            state=r.state(chain),
            registered=r.registered,
            last_action=r.last_action,
            last_duration_ms=r.last_duration_ms,
            last_path=r.last_path,
            last_error=r.last_error,
            updated_at=r.updated_at,
            node=nodes.get(r.schema),
        )
        for r in records
        if r.exists or r.registered
    ]


def fleet_summary(
    chain: Chain, statuses: Sequence[ProjectStatus], spares: dict[str, int] | None = None
) -> dict[str, Any]:
    """Counts by state and by revision, and the schemas needing attention: missing (registered, no
    schema), orphans (a project schema with no registry row), failed (the last run failed on them); the
    warm pool's spares by state (``spares``: counted apart, they are no project's), when given; on a
    distributed database, the schemas each node holds."""
    counts = {str(state): 0 for state in State}
    by_revision: dict[tuple[str | None, str], int] = {}
    for s in statuses:
        counts[str(s.state)] += 1
        key = (s.revision, str(s.state))
        by_revision[key] = by_revision.get(key, 0) + 1
    order = {rev: chain.position(rev) if chain.knows(rev) else 10**9 for rev, _ in by_revision}

    def pick(state: State, *fields: str) -> list[dict[str, Any]]:
        return [{k: getattr(s, k) for k in ("project_id", "schema", *fields)} for s in statuses if s.state == state]

    by_node = Counter(s.node for s in statuses if s.node is not None)
    return {
        "head": chain.head,
        "total": len(statuses),
        "counts": counts,
        "nodes": [{"node": node, "schemas": n} for node, n in sorted(by_node.items())],  # distributed only
        "revisions": [
            {"revision": rev, "state": state, "schemas": n}
            for (rev, state), n in sorted(by_revision.items(), key=lambda kv: (-order[kv[0][0]], kv[0][1]))
        ],
        "missing": pick(State.MISSING, "registry_revision"),
        "orphans": pick(State.ORPHAN, "revision"),
        "failed": pick(State.FAILED, "revision", "last_action", "last_error"),
        **({} if spares is None else {"spares": spares}),
    }
