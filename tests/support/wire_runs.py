"""What a fleet run sends, read on the wire (tests/wire.py's WireRecorder)."""

from __future__ import annotations

import sqlalchemy as sa
from wire import WireRecorder

from workspace_tool import fleet
from workspace_tool.chain import Chain
from workspace_tool.fleet import RunSpec, Selection
from workspace_tool.lifecycle.exec import exec_operation
from workspace_tool.schema.operation import Operation


def warm_run_queries(wire: WireRecorder, chain: Chain, operation: Operation, ids: list[str]) -> list[str]:
    """The queries a fleet run of ``operation`` over ``ids`` sends through ``wire``, on an engine that has
    run once already (its first connect and the pooler probe are behind it); every schema must succeed."""
    engine = sa.create_engine(wire.url)
    try:
        fleet.run(engine, chain, exec_operation("SELECT 1"), RunSpec(jobs=1, selection=Selection(ids=ids[:1])))
        wire.clear()
        report = fleet.run(engine, chain, operation, RunSpec(jobs=1, selection=Selection(ids=ids)))
        assert report.counts()["ok"] == len(ids), report.failed
        return wire.queries
    finally:
        engine.dispose()
