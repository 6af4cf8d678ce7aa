"""A chain's revision graph kept on disk between processes: the revisions in order, the head, which ones
run online, the chain's fingerprint. A process that needs only the graph (a fleet run's planning, a no-op
`upgrade --all`, `status`, `ensure` of a schema at head) then never imports Alembic (100-150 ms) or the
revision files; compiling a range or running one online still goes through Alembic, in this process.

A record is used only while every file it was read from is byte for byte the same (alembic.ini, env.py,
each revision file, the package's environment and the code that read the graph) and the chain's version
directories hold the same revision files (a revision added or removed makes it stale); otherwise the chain
is read through Alembic again and the record rewritten. Records live in ``$WORKSPACE_TOOL_CACHE_DIR``,
else ``$XDG_CACHE_HOME/workspace-tool``, else ``~/.cache/workspace-tool`` (one file per alembic.ini, under
``chains/``); ``WORKSPACE_TOOL_CACHE_DIR=off`` turns them off, and a directory that can't be written just
means no record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE_ENV = "WORKSPACE_TOOL_CACHE_DIR"
FORMAT = 3
_REVISION_SUFFIXES = (".py", ".pyc", ".pyo")  # what Alembic reads as revision files (.pyc: sourceless)
# The code that reads a graph: a change to it (say, to what makes a revision run online) makes records stale.
_READERS = tuple(Path(__file__).resolve().parent / name for name in ("index.py", "revisions.py"))
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Graph:
    """What a Chain knows without Alembic."""

    head: str
    order: tuple[str, ...]  # base first
    online: frozenset[str]  # revisions that always run online (workspace_online, get_bind(), ...)
    outside: frozenset[str]  # revisions that can't run in a transaction (workspace_transactional = False, ...)
    options: dict[str, str]  # alembic.ini's main options named workspace_* (fast path on/off, pool size...)
    fingerprint: str  # Chain.fingerprint
    sources: tuple[str, ...]  # every file the graph was read from
    directories: tuple[str, ...]  # the version directories, whose revision files are listed
    recursive: bool  # Alembic's recursive_version_locations


def cache_dir() -> Path | None:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return None if configured.strip().lower() == "off" else Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "workspace-tool"


def read(config_path: Path) -> Graph | None:
    """The recorded graph of the chain of this alembic.ini, if there is one and it is current."""
    path = _record_path(config_path)
    if path is None:
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") != FORMAT or record.get("config") != str(config_path):
            return None
        graph = Graph(
            head=record["head"],
            order=tuple(record["order"]),
            online=frozenset(record["online"]),
            outside=frozenset(record["outside"]),
            options={str(k): str(v) for k, v in record["options"].items()},
            fingerprint=record["fingerprint"],
            sources=tuple(record["sources"]),
            directories=tuple(record["directories"]),
            recursive=bool(record["recursive"]),
        )
        current = record["digests"] == _digests(graph) and record["listings"] == _listings(graph)
    except (OSError, ValueError, KeyError, TypeError):  # missing, unreadable, or not ours
        return None
    return graph if current else None


def write(config_path: Path, graph: Graph) -> None:
    """Record the graph (atomically); a cache directory that can't be written is not an error."""
    path = _record_path(config_path)
    if path is None:
        return
    record: dict[str, Any] = {
        "format": FORMAT,
        "config": str(config_path),
        "head": graph.head,
        "order": list(graph.order),
        "online": sorted(graph.online),
        "outside": sorted(graph.outside),
        "options": graph.options,
        "fingerprint": graph.fingerprint,
        "sources": list(graph.sources),
        "directories": list(graph.directories),
        "recursive": graph.recursive,
    }
    try:
        record["digests"] = _digests(graph)
        record["listings"] = _listings(graph)
        write_json(path, record)
    except OSError as exc:
        log.debug("could not record the chain's graph in %s: %s", path, exc)


def write_json(path: Path, record: object) -> None:
    """``record`` as JSON at ``path``, atomically: a temporary file beside it, renamed over it (a reader
    sees the old record or the new one, never half of one). Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)
    os.replace(temporary, path)


def _record_path(config_path: Path) -> Path | None:
    directory = cache_dir()
    if directory is None:
        return None
    return directory / "chains" / (hashlib.sha256(str(config_path).encode()).hexdigest()[:24] + ".json")


def _digests(graph: Graph) -> dict[str, str]:
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in (*map(Path, graph.sources), *_READERS)}


def _listings(graph: Graph) -> dict[str, list[str]]:
    """The revision files in each version directory (a new or deleted revision makes the record stale)."""
    listings = {}
    for directory in map(Path, graph.directories):
        found = directory.rglob("*") if graph.recursive else directory.iterdir()
        listings[str(directory)] = sorted(
            str(p.relative_to(directory))
            for p in found
            if p.suffix in _REVISION_SUFFIXES and "__pycache__" not in p.parts and p.is_file()
        )
    return listings
