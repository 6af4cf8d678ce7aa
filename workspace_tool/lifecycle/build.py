"""A new project's schema built at a given revision in the caller's transaction, under the project's lock,
its registry row written with it: what import and clone start with (the rows follow in the same
transaction)."""

from __future__ import annotations

from sqlalchemy import Connection

from workspace_tool.chain import Chain
from workspace_tool.chain.plan import Plan
from workspace_tool.flavor import Flavor
from workspace_tool.lifecycle.errors import ChainMismatch, LifecycleRefused, ProjectExists
from workspace_tool.registry.table import RegistryAction
from workspace_tool.schema import send
from workspace_tool.schema.plan import RegistryRecord, SchemaPlan
from workspace_tool.schema.state import lock_and_read_state


def create_at(
    conn: Connection,
    chain: Chain,
    flavor: Flavor,
    project_id: str,
    schema: str,
    revision: str,
    action: RegistryAction,
    lock_timeout_ms: int,
) -> None:
    """In conn's transaction: take the project's lock, refuse a project that exists (its schema or its
    registry row), then build its schema at ``revision`` and register it (``action``)."""
    state = lock_and_read_state(conn, project_id, schema, flavor, lock_timeout_ms, chain.namespace)
    if state.exists or state.registered:
        raise ProjectExists(project_id, schema)
    range_ = buildable(chain, revision, action)
    plan = SchemaPlan(
        schema,
        flavor,
        range_.steps,
        lock_timeout_ms=lock_timeout_ms,
        create_schema=True,
        record=RegistryRecord(project_id, revision, action, range_.path),
        namespace=chain.namespace,
    )
    send.run(conn, plan, chain, lock_held=True)


def buildable(chain: Chain, revision: str, action: RegistryAction) -> Plan:
    """The chain's plan from base to ``revision``, refused (LifecycleRefused) when a revision on the way
    can't run in a transaction: ``action`` builds the schema and copies its rows in one. What a move checks
    before it quarantines its source, and create_at before it builds."""
    range_ = chain.plan(None, revision)
    outside = chain.outside_transaction(range_.steps)
    if outside:
        raise LifecycleRefused(
            f"revision {', '.join(outside)} can't run in a transaction, and {action} builds the schema and "
            "copies its rows in one: nothing was changed"
        )
    return range_


def upgrade_in_place(
    conn: Connection, chain: Chain, flavor: Flavor, project_id: str, schema: str, revision: str, lock_timeout_ms: int
) -> str:
    """In conn's transaction (the project's lock held): run the chain from ``revision`` to head on the
    schema and its rows; returns head."""
    range_ = chain.plan(revision, chain.head)
    plan = SchemaPlan(
        schema,
        flavor,
        range_.steps,
        lock_timeout_ms=lock_timeout_ms,
        record=RegistryRecord(project_id, chain.head, RegistryAction.UPGRADE, range_.path),
        namespace=chain.namespace,
    )
    if not plan.in_one_transaction:
        raise LifecycleRefused(
            f"revision {', '.join(chain.outside_transaction(range_.steps))} can't run in a transaction: import "
            "without --upgrade, then run `workspace-tool upgrade`; nothing was changed"
        )
    send.run(conn, plan, chain, lock_held=True)
    return chain.head


def lineage(chain: Chain, revision: str) -> list[str]:
    """The revisions from base to ``revision``: what an export's chain identity is made of."""
    if not chain.knows(revision) or revision is None:
        raise ChainMismatch(f"revision {revision!r} is not in this chain")
    revisions = chain.revisions
    return revisions[: revisions.index(revision) + 1]
