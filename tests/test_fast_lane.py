"""The fleet's one-round-trip lane (provisioning.migrate_expected): it applies a range only when the
schema is exactly as the batch read saw it, and otherwise changes nothing and hands over to migrate_on."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from helpers import ITEMS, UNIQUE, ChainBuilder, add_rows, registry_state, schema_version

from workspace_tool import fleet
from workspace_tool.chain import Chain
from workspace_tool.flavor import Flavor
from workspace_tool.schema.catalog import snapshot
from workspace_tool.schema.migrate import Migration, Sending, migrate_expected
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
