"""The fleet's one-round-trip lane (schema.migrate.migrate_expected): it applies a range only when the
schema is exactly as the batch read saw it, and otherwise changes nothing and hands over to ``migrate``."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from support.chains import ITEMS, ChainBuilder
from support.data import add_rows
from support.db import registry_row, registry_state, schema_version

from workspace_tool import fleet
from workspace_tool.chain import Chain
from workspace_tool.dberrors import STATE_CHANGED, sqlstate
from workspace_tool.flavor import Flavor
from workspace_tool.schema import send
from workspace_tool.schema.catalog import snapshot
from workspace_tool.schema.migrate import Migration, Sending, fast_lane, migrate_expected
from workspace_tool.schema.operation import UPGRADE
from workspace_tool.schema.plan import Expected

EXT = "workspace_extensions"


def lane(engine: sa.Engine, chain: Chain, project: str, *, exists: bool, version: str | None, target: str) -> Any:
    with engine.connect() as conn:
        what = Migration(project, f"project_{project}", target, UPGRADE)
        result = migrate_expected(conn, Sending(chain, Flavor(EXT)), what, Expected(exists, version))
        # the connection is back to transactional mode: a rolled-back write leaves nothing
        with conn.begin() as tx:
            conn.execute(sa.text("CREATE TABLE public.lane_probe (x int)"))
            tx.rollback()
        assert conn.execute(sa.text("SELECT to_regclass('public.lane_probe')")).scalar() is None
        return result


def state(engine: sa.Engine, schema: str) -> Any:
    with engine.connect() as conn:
        return snapshot(conn, schema)


def test_lane_creates_and_upgrades_when_the_state_is_as_read(engine: sa.Engine, tiny: Chain) -> None:
    fleet.provision(engine, tiny, ["seed"], target="a1")  # bootstraps the registry
    created = lane(engine, tiny, "fresh", exists=False, version=None, target="a1")
    assert (created.action, created.to_revision, created.path) == ("created", "a1", "fast")
    assert schema_version(engine, "project_fresh") == "a1"
    assert tuple(registry_state(engine, "fresh")) == ("a1", "ready", None)

    upgraded = lane(engine, tiny, "fresh", exists=True, version="a1", target="a2")
    assert (upgraded.action, upgraded.from_revision, upgraded.to_revision) == ("upgraded", "a1", "a2")
    assert schema_version(engine, "project_fresh") == "a2"
    assert tuple(registry_state(engine, "fresh")) == ("a2", "ready", None)


def test_lane_changes_nothing_when_the_schema_moved_since_it_was_read(engine: sa.Engine, tiny: Chain) -> None:
    fleet.provision(engine, tiny, ["moved"], target="a2")
    before, row = state(engine, "project_moved"), tuple(registry_state(engine, "moved"))
    # read as a1, but it is at a2 now: the version move finds no row, so nothing commits
    assert lane(engine, tiny, "moved", exists=True, version="a1", target="a2") is None
    # read as absent, but it exists: CREATE SCHEMA fails, nothing commits
    assert lane(engine, tiny, "moved", exists=False, version=None, target="a2") is None
    assert state(engine, "project_moved") == before
    assert tuple(registry_state(engine, "moved")) == row


def test_lane_of_a_schema_with_no_registry_row_changes_nothing_and_the_fleet_writes_the_row(
    engine: sa.Engine, tiny: Chain
) -> None:
    """The lane rewrites the registry row the batch read saw (an UPDATE, cheaper than an upsert); a schema
    with none (an orphan named by the caller) is left as it was, and the careful path migrates and records it."""
    fleet.provision(engine, tiny, ["orphan"], target="a1")
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM project_registry.workspace_config WHERE project_id = 'orphan'"))
    before = state(engine, "project_orphan")
    assert lane(engine, tiny, "orphan", exists=True, version="a1", target="a2") is None
    assert state(engine, "project_orphan") == before
    assert registry_row(engine, "orphan") is None

    report = fleet.upgrade(engine, tiny, ["orphan"], target="a2")
    assert report.counts()["ok"] == 1
    assert schema_version(engine, "project_orphan") == "a2"
    assert tuple(registry_state(engine, "orphan")) == ("a2", "ready", None)


def test_lane_raises_the_database_error_and_rolls_back(engine: sa.Engine, tiny: Chain) -> None:
    fleet.provision(engine, tiny, ["dupes"], target="a1")
    add_rows(engine, "dupes", "same", "same")
    before = state(engine, "project_dupes")
    with pytest.raises(sa.exc.DBAPIError, match="could not create unique index"):
        lane(engine, tiny, "dupes", exists=True, version="a1", target="a2")
    assert state(engine, "project_dupes") == before
    assert schema_version(engine, "project_dupes") == "a1"


def test_the_guard_fails_with_its_own_sqlstate_and_the_lane_tells_it_apart(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    """A range whose statements still run on the schema as it is now (a comment): only the guard stops it,
    with STATE_CHANGED, a SQLSTATE of its own, which the lane reads as "not as read" (and nothing else)."""
    chain_builder.add("c1", ITEMS).add("c2", "op.execute(\"COMMENT ON TABLE items IS 'c2'\")")
    chain = Chain.load(chain_builder.ini)
    fleet.provision(engine, chain, ["guarded"], target="c2")
    what = Migration("guarded", "project_guarded", "c2", UPGRADE)
    stale = Expected(True, "c1")  # read at c1: it is at c2
    plan = fast_lane(Sending(chain, Flavor(EXT)), what, stale)
    assert plan is not None and plan.batchable
    with engine.connect() as conn, pytest.raises(Exception) as failed:
        send.send_batch(conn, plan)
    assert sqlstate(failed.value) == STATE_CHANGED
    assert str(failed.value).startswith(
        "workspace-tool:state-changed project_guarded is no longer at revision c1 as it was read: nothing was changed"
    )
    before = tuple(registry_state(engine, "guarded"))
    assert lane(engine, chain, "guarded", exists=True, version="c1", target="c2") is None  # the careful path's turn
    assert schema_version(engine, "project_guarded") == "c2"
    assert tuple(registry_state(engine, "guarded")) == before


def test_the_lane_is_seen_by_cursor_listeners_added_after_its_connection_was_opened(
    engine: sa.Engine, tiny: Chain
) -> None:
    """The lane sends on the raw driver, yet the engine's cursor events see its round trip as SQLAlchemy's own
    statements: also those of a listener added while a fleet run holds its connections (mid-run), and no
    longer once it is removed."""
    fleet.provision(engine, tiny, ["seed"], target="a1")
    quiet = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)  # no listener when its connection opens
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    how = Sending(tiny, Flavor(EXT))
    try:
        with quiet.connect() as conn:
            sa.event.listen(quiet, "before_cursor_execute", record)
            try:
                first = migrate_expected(
                    conn, how, Migration("one", "project_one", "a1", UPGRADE), Expected(False, None)
                )
            finally:
                sa.event.remove(quiet, "before_cursor_execute", record)
            second = migrate_expected(conn, how, Migration("two", "project_two", "a1", UPGRADE), Expected(False, None))
    finally:
        quiet.dispose()
    assert first is not None and second is not None
    assert len(seen) == 1 and "CREATE SCHEMA" in seen[0] and "project_one" in seen[0]  # its one round trip
    assert schema_version(engine, "project_two") == "a1"
