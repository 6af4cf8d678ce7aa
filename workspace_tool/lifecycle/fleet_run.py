"""The one place the lifecycle's fleet-wide commands (bulk drop, exec, bulk ensure) call the fleet runner:
they get its selectors, --jobs, canary, --max-failures, progress, lock timeout and retries, and its report."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine
from typing_extensions import Unpack

from workspace_tool.chain import Chain
from workspace_tool.fleet import FleetOptions, FleetReport, Operation, run


def run_fleet(
    engine: Engine,
    chain: Chain,
    operation: Operation,
    project_ids: Sequence[str] | None,
    *,
    target: str = "head",
    **options: Unpack[FleetOptions],
) -> FleetReport:
    """``operation`` over the named projects (or every project read, narrowed by ``options['selection']``)."""
    return run(engine, chain, operation, project_ids, target=target, **options)
