"""The fleet's one-round-trip lane (schema.migrate.migrate_expected): it applies a range only when the
schema is exactly as the batch read saw it, and otherwise changes nothing and hands over to ``migrate``."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from support.chains import ITEMS, UNIQUE, ChainBuilder
from support.data import add_rows
from support.db import registry_state, schema_version

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


@pytest.fixture
def tiny(chain_builder: ChainBuilder) -> Chain:
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")').add(
        "a2", UNIQUE, 'op.drop_index("ux_items_name", table_name="items")'
    )
    return Chain.load(chain_builder.ini)


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
