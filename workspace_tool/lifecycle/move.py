"""`move ID --to-url URL`: a project to another database running the same chain, in steps that each leave
the tenant in exactly one place the registry names, so that a crash at any point is resumed by running the
same command again (its state is read from both databases, no journal file):

1. quarantine: the source schema renamed aside (registry status 'dropped', quarantine by 'move'), in one
   transaction under the project's lock. The application can no longer write to it, so nothing written
   after the export is lost. A crash before it commits: nothing changed.
2. export the quarantined schema to a file (written beside it, then renamed) in ``work_dir``.
3. import the file into the target: one transaction (nothing is left there by a crash before it commits).
4. verify: the target's row counts, table by table, against the quarantined source's.
5. purge the source (its quarantined schema and its registry row), in one transaction.

What a crash leaves, and what the next `move` does with it: after 1, 2 or during 3: the source quarantined
(by 'move'), nothing on the target: it exports and imports again. After 3, before 5: the source quarantined
and the tenant live on the target (never live in both): it verifies and purges. After 5: the project only on
the target: it says the move is done. To call a move off before step 3: `restore ID` on the source."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text

from workspace_tool import registry, transactions
from workspace_tool.chain import Chain
from workspace_tool.dberrors import translating
from workspace_tool.errors import UnknownRevision, WorkspaceError, WorkspaceNotFound
from workspace_tool.lifecycle import drop
from workspace_tool.lifecycle.build import buildable
from workspace_tool.lifecycle.errors import LifecycleRefused, ProjectExists
from workspace_tool.lifecycle.export import export_project
from workspace_tool.lifecycle.import_ import import_project
from workspace_tool.lifecycle.tables import project_tables, row_counts
from workspace_tool.namespace import Namespace
from workspace_tool.registry import known as cache
from workspace_tool.registry.table import RegistryAction
from workspace_tool.schema.operation import Work
from workspace_tool.schema.state import version_table
from workspace_tool.sql import DEFAULT_LOCK_TIMEOUT_MS

MOVE_RETAIN_S = 30 * 86400.0  # a quarantine by a move that never finished expires after 30 days
STEPS = ("quarantine", "export", "import", "verify", "purge")
_DATABASE = text("SELECT pg_postmaster_start_time(), oid, datname FROM pg_database WHERE datname = current_database()")


class MoveInterrupted(WorkspaceError):
    """A move stopped between its steps: the line says where the tenant is and how to resume."""


@dataclass
class MoveResult:
    project_id: str
    resumed_from: str | None  # the step a crashed move had reached (None: a new move)
    steps: list[str] = field(default_factory=list)  # the steps this run did
    rows: int = 0
    ms: float = 0.0
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def move_project(
    source: Engine,
    target: Engine,
    chain: Chain,
    project_id: str,
    *,
    work_dir: str | None = None,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
) -> MoveResult:
    """Move ``project_id`` from ``source`` to ``target``; see the module's docstring."""
    started = time.perf_counter()
    namespace = chain.namespace
    schema = namespace.schema_for(project_id)
    if work_dir is not None and not os.path.isdir(work_dir):
        raise LifecycleRefused(f"--work-dir {work_dir} is not a directory: nothing was changed")
    if source.url == target.url or _database(source) == _database(target):
        raise LifecycleRefused("the target is the source's database: nothing was changed")
    live, moving = _source_state(source, project_id, schema, namespace)
    on_target = _present(target, project_id, schema, namespace)
    result = MoveResult(project_id, None)
    if live:
        if on_target:
            raise ProjectExists(project_id, schema)
        revision = _version(source, schema)
        if revision is None or not chain.knows(revision):
            raise UnknownRevision(schema, str(revision or "base"))
        buildable(chain, revision, RegistryAction.IMPORT)  # the import could not: refused before the quarantine
        _quarantine(source, project_id, schema, namespace, lock_timeout_ms)
        result.steps.append("quarantine")
    elif moving is None:
        if on_target:
            result.done, result.resumed_from = True, "purge"
            return result
        raise WorkspaceNotFound(project_id, schema)
    else:
        result.resumed_from = "import" if on_target else "quarantine"
    aside = drop.quarantine_name(schema, namespace)
    try:
        if not on_target:
            with tempfile.TemporaryDirectory(dir=work_dir, prefix="workspace-move-") as directory:
                path = os.path.join(directory, f"{project_id}.wstx")
                export_project(source, chain, project_id, path, schema=aside)
                result.steps.append("export")
                import_project(target, chain, path, lock_timeout_ms=lock_timeout_ms)
                result.steps.append("import")
        result.rows = _verify(source, target, aside, schema)
        result.steps.append("verify")
        drop.purge(source, project_id, namespace=namespace, lock_timeout_ms=lock_timeout_ms)
        result.steps.append("purge")
    except WorkspaceError as exc:
        where = (
            "the target holds it too (not verified)" if "import" in result.steps or on_target else "not on the target"
        )
        raise MoveInterrupted(
            f"{exc} -- move of {project_id} stopped after {(result.steps or [str(result.resumed_from)])[-1]}: "
            f"quarantined on the source as {aside}, {where}; run the same move again to resume, or "
            f"`workspace-tool restore {project_id}` on the source to call it off"
        ) from exc
    cache.invalidate(cache.database_key(source.url, chain.config_path), [project_id])
    result.done, result.ms = True, (time.perf_counter() - started) * 1000
    return result


def _source_state(
    engine: Engine, project_id: str, schema: str, namespace: Namespace
) -> tuple[bool, drop.Quarantined | None]:
    """(the project is live on the source, its quarantine by a move under way or None)."""
    with translating(engine.url, schema), transactions.connect(engine) as conn, conn.begin():
        live = bool(conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": version_table(schema)}).scalar())
        quarantined = drop.quarantine_state(conn, project_id, namespace)
    if quarantined is not None and quarantined.by != "move":
        raise LifecycleRefused(
            f"{project_id} is quarantined by `drop --retain`: `workspace-tool restore {project_id}` it first"
        )
    return live and quarantined is None, quarantined


def _present(engine: Engine, project_id: str, schema: str, namespace: Namespace) -> bool:
    with translating(engine.url, schema), transactions.connect(engine) as conn, conn.begin():
        exists = conn.execute(text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :s)"), {"s": schema})
        if exists.scalar():
            return True
        if not registry.present(conn, namespace):
            return False
        found = text(f"SELECT 1 FROM {namespace.table('workspace_config')} WHERE project_id = :p")
        row = conn.execute(found, {"p": project_id})
        return row.first() is not None


def _database(engine: Engine) -> tuple[object, ...]:
    """Which database ``engine`` reaches, whatever its URL (a pooler's, the server's own): its server's start
    time, its oid and name."""
    with transactions.connect(engine) as conn, conn.begin():
        return tuple(conn.execute(_DATABASE).one())


def _quarantine(engine: Engine, project_id: str, schema: str, namespace: Namespace, lock_timeout_ms: int) -> None:
    task = drop.DropTask(MOVE_RETAIN_S, by="move", namespace=namespace)
    with translating(engine.url, schema), transactions.connect(engine) as conn:
        flavor = registry.bootstrap(conn, namespace)
        task.run(conn, Work(project_id, schema, _version(conn, schema)), flavor, lock_timeout_ms)


def _version(where: Connection | Engine, schema: str) -> str | None:
    """The schema's revision (in a transaction of its own on ``where``, a connection or a new one)."""
    if isinstance(where, Engine):
        with translating(where.url, schema), transactions.connect(where) as conn:
            return _version(conn, schema)
    with where.begin():
        version = where.execute(text(f"SELECT version_num FROM {version_table(schema)}")).scalar()
    return None if version is None else str(version)


def _verify(source: Engine, target: Engine, aside: str, schema: str) -> int:
    """The target's row counts, table by table, as the quarantined source's; their total."""
    counts = []
    for engine, name in ((source, aside), (target, schema)):
        with translating(engine.url, name), transactions.connect(engine) as conn, conn.begin():
            counts.append(row_counts(conn, name, project_tables(conn, name)))
    if counts[0] != counts[1]:
        differ = sorted(t for t in set(counts[0]) | set(counts[1]) if counts[0].get(t) != counts[1].get(t))
        raise LifecycleRefused(
            f"the target's rows differ from the source's ({', '.join(differ)}): the source is kept quarantined "
            f"as {aside}; look at both, then drop the target's copy and run move again, or restore the source"
        )
    return sum(counts[0].values())
