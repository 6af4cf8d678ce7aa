"""A chain's planned ranges (their compiled statements) kept on disk between processes, beside the graph
record (chain/index.py): a process that migrates a range planned before (a fleet run's usual case) then
never imports Alembic's runtime nor runs env.py and the revision files to compile it.

A record is keyed by everything the statements are made from: the chain's fingerprint (every revision
file, env.py and the environment it runs), alembic.ini's ``workspace_*`` options (which revisions run
online), the Alembic and SQLAlchemy versions (they render the SQL) and the code that plans ranges. Any
change makes a new key, so a record is never used for a chain it wasn't made from: an edited revision file
is planned through Alembic again. One JSON file per key under ``<cache dir>/plans/`` (``index.cache_dir``:
``WORKSPACE_TOOL_CACHE_DIR=off`` turns it off too); missing, unreadable or not ours: no record, the range
is compiled through Alembic as before, and a directory that can't be written just means no record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy

from workspace_tool.chain import index
from workspace_tool.chain.alembic_run import alembic_version
from workspace_tool.chain.plan import Step, StepKind

FORMAT = 1
# The code that plans a range and compiles its statements: a change to it makes every record stale.
_PLANNERS = tuple(
    Path(__file__).resolve().parent / name for name in ("revisions.py", "plan.py", "alembic_run.py", "plan_record.py")
)
Key = tuple[str | None, str | None, bool]  # (from, to, online): Chain.plan's
_lock = threading.Lock()
_loaded: dict[Path, dict[str, Any]] = {}
log = logging.getLogger(__name__)


@cache
def _planners_digest() -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in _PLANNERS)).hexdigest()[:16]


def record_path(fingerprint: str, options: dict[str, str]) -> Path | None:
    """The record of a chain with this fingerprint and these options (None: records are off)."""
    directory = index.cache_dir()
    if directory is None:
        return None
    key = json.dumps(
        [FORMAT, fingerprint, sorted(options.items()), alembic_version(), sqlalchemy.__version__, _planners_digest()]
    )
    return directory / "plans" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


def read(path: Path | None, key: Key) -> tuple[Step, ...] | None:
    """The recorded steps of the range ``key``, if recorded."""
    if path is None:
        return None
    entry = _load(path).get(json.dumps(list(key)))
    if entry is None:
        return None
    try:
        return tuple(Step(StepKind(s["kind"]), s["from"], s["to"], tuple(s["statements"])) for s in entry)
    except (KeyError, ValueError, TypeError):
        return None


def write(path: Path | None, key: Key, steps: tuple[Step, ...]) -> None:
    """Add the range ``key`` to the record (atomically)."""
    if path is None:
        return
    with _lock:
        record = {**_load(path), json.dumps(list(key)): [_step(s) for s in steps]}
        try:
            index.write_json(path, record)
        except OSError as exc:
            log.debug("could not record the planned range in %s: %s", path, exc)
        _loaded[path] = record


def _step(step: Step) -> dict[str, Any]:
    return {"kind": step.kind.value, "from": step.from_rev, "to": step.to_rev, "statements": list(step.statements)}


def _load(path: Path) -> dict[str, Any]:
    """The record as read once by this process (and as this process added to it)."""
    if path not in _loaded:
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = {}
        _loaded[path] = loaded if isinstance(loaded, dict) else {}
    return _loaded[path]
