"""What the library sends on the wire, counted by a proxy (tests/wire.py): the round trips a fleet run
spends per schema, a first ensure's, a warm-pool claim's. Each extra round trip is one more network
latency per schema for every user: these counts are the contract, not a timing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from helpers import ITEMS, UNIQUE, ChainBuilder, schema_version
from sqlalchemy.engine import URL
from wire import WireRecorder

from workspace_tool import fleet
from workspace_tool.chain import Chain


@pytest.fixture
def tiny(chain_builder: ChainBuilder) -> Chain:
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")').add(
        "a2", UNIQUE, 'op.drop_index("ux_items_name", table_name="items")'
    )
    return Chain.load(chain_builder.ini)


@pytest.fixture
def wire(database_url: URL) -> Iterator[WireRecorder]:
    with WireRecorder(database_url) as recorder:
        yield recorder


def _upgrade_counting(wire: WireRecorder, chain: Chain, ids: list[str]) -> list[str]:
    engine = sa.create_engine(wire.url)
    try:
        wire.clear()
        report = fleet.upgrade(engine, chain, ids, target="a2", jobs=1, pool=False)
        assert report.counts()["ok"] == len(ids), report.failed
        return wire.queries
    finally:
        engine.dispose()


def test_a_fleet_run_sends_one_round_trip_per_schema(engine: sa.Engine, tiny: Chain, wire: WireRecorder) -> None:
    ids = [f"rt{i}" for i in range(11)]
    assert fleet.provision(engine, tiny, ids, target="a1", jobs=2).ok
    _upgrade_counting(wire, tiny, ids[:1])  # the first run of a chain stores what later runs only read

    two = _upgrade_counting(wire, tiny, ids[1:3])
    ten = _upgrade_counting(wire, tiny, ids[3:])

    assert all(schema_version(engine, f"project_{i}") == "a2" for i in ids)
    batches = [q for q in ten if q.startswith("BEGIN") and "project_rt" in q]
    assert len(batches) == 8  # each schema's whole transaction, one batch
    # the 6 schemas more cost exactly 6 round trips more: nothing but their batches is sent per schema
    assert len(ten) - len(two) == 6, [q for q in ten if q not in batches]
    assert not [q for q in ten if "default_transaction_isolation" in q]
