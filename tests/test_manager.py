"""WorkspaceManager.ensure against real PostgreSQL (issue #2, sections 2, 5, 6): what a fresh provisioning
creates, upgrades from every older revision, downgrade and back, refusing to upgrade or to touch an
unknown revision, the cache, atomicity, and the registry row."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import psycopg2.extensions
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from support.chains import ALEMBIC_INI, HEAD, MAIN_REVISIONS, ROOT, TABLES, ChainBuilder, truncated_chain
from support.cli import run_alembic
from support.data import make_schema_by_hand
from support.db import catalog, registry_row, reset_database, schema_exists, schema_tables, schema_version

from workspace_tool import (
    ConfigurationError,
    MigrationFailed,
    UnknownRevision,
    UnmanagedSchema,
    WorkspaceManager,
    WorkspaceOutdated,
)
from workspace_tool.managers import cache
from workspace_tool.schema.catalog import diff

# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def reference_catalog(session_engine: sa.Engine) -> dict[str, Any]:
    """The catalog of a schema freshly provisioned to head (the yardstick for every other path)."""

    reset_database(session_engine)
    mgr = WorkspaceManager(session_engine, ALEMBIC_INI)
    mgr.ensure("reference")
    result = catalog(session_engine, "project_reference")
    mgr.close()
    return result


# ------------------------------------------------------------------ fresh provisioning
def test_fresh_provisioning_creates_everything_in_the_project_schema(manager: WorkspaceManager) -> None:
    engine = manager.engine
    result = manager.ensure_detailed("fresh")
    assert (result.schema, result.action, result.from_revision, result.to_revision) == (
        "project_fresh",
        "created",
        None,
        HEAD,
    )
    assert result.duration_ms > 0
    assert schema_tables(engine, "project_fresh") == TABLES
    assert schema_version(engine, "project_fresh") == HEAD
    snap = catalog(engine, "project_fresh")

    columns = {t: {c["name"]: c for c in r["columns"]} for t, r in snap["relations"].items()}
    assert columns["code_chunks"]["embedding"]["type"] == "workspace_extensions.vector(768)"
    assert columns["code_chunks"]["token_count"]["type"] == "integer"  # 0004 add_column
    assert columns["repositories"]["name"]["type"] == "character varying(255)"  # 0004 alter_column
    assert "path" in columns["change_events"] and "file_path" not in columns["change_events"]  # 0004 rename
    assert columns["code_files"]["language"]["default"] == "'unknown'::character varying"
    assert columns["repositories"]["id"]["default"] == "gen_random_uuid()"
    assert columns["repositories"]["is_active"] == {
        "name": "is_active",
        "type": "boolean",
        "not_null": True,
        "default": "true",
        "comment": None,
        "identity": None,
        "generated": None,
    }
    assert columns["embedding_metadata"]["model_name"]["default"] == "'nomic-embed-text'::character varying"
    assert columns["embedding_metadata"]["dimensions"]["default"] == "768"
    assert columns["indexing_jobs"]["status"]["default"] == "'pending'::character varying"

    indexes = {name: i["definition"] for name, i in snap["indexes"].items()}
    assert indexes["ix_code_chunks_embedding_hnsw"] == (
        "CREATE INDEX ix_code_chunks_embedding_hnsw ON <schema>.code_chunks USING hnsw "
        "(embedding workspace_extensions.vector_cosine_ops) WITH (m='16', ef_construction='64')"
    )
    assert indexes["ix_indexing_jobs_active"].endswith(
        "USING btree (project_id, status) WHERE ((status)::text = ANY "
        "((ARRAY['pending'::character varying, 'running'::character varying])::text[]))"
    )
    assert indexes["ix_indexing_jobs_created_at"].endswith("USING btree (created_at DESC)")
    for name in ("ix_code_files_path", "ix_code_chunks_code_file_id", "ix_code_files_content_hash"):
        assert name in indexes
    assert indexes["ix_change_events_repository_detected"].endswith("(repository_id, detected_at)")

    constraints = {name: (c["type"], c["definition"]) for name, c in snap["constraints"].items()}
    for table, fk, target in [
        ("code_files", "fk_code_files_repository_id", "repositories"),
        ("code_chunks", "fk_code_chunks_code_file_id", "code_files"),
        ("change_events", "fk_change_events_repository_id", "repositories"),
        ("indexing_jobs", "fk_indexing_jobs_repository_id", "repositories"),
    ]:
        kind, definition = constraints[f"{table}.{fk}"]
        assert kind == "f"
        assert f"REFERENCES <schema>.{target}(id) ON DELETE CASCADE" in definition
    assert constraints["repositories.uq_repositories_path"] == ("u", "UNIQUE (path)")
    assert constraints["code_files.uq_code_files_repository_relative_path"] == (
        "u",
        "UNIQUE (repository_id, relative_path)",
    )
    kind, check = constraints["indexing_jobs.ck_indexing_jobs_status"]
    assert kind == "c"
    for status in ("pending", "running", "completed", "failed"):
        assert f"'{status}'" in check
    assert snap["alembic_version"] == [HEAD]

    # Nothing landed anywhere else: public is empty, the extension schema holds no tables.
    with engine.connect() as conn:
        elsewhere = conn.execute(
            sa.text(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname IN ('public', 'workspace_extensions') AND c.relkind IN ('r', 'i', 'S', 'v')"
            )
        ).scalars()
        assert list(elsewhere) == []

    row = registry_row(engine, "fresh")
    assert row is not None
    assert row["schema_name"] == "project_fresh"
    assert row["revision"] == HEAD
    assert row["status"] == "ready"
    assert row["last_action"] == "create"
    assert row["last_duration_ms"] > 0
    assert row["last_path"] == "fast"
    assert row["metadata"] == {}
    assert row["created_at"] is not None and row["updated_at"] is not None


def test_the_schema_works_for_the_application(manager: WorkspaceManager) -> None:
    """Rows go in, the CHECK refuses a bad status, deleting a repository cascades, vectors are searchable."""
    schema = manager.ensure("usable")
    vector = "[" + ",".join(["0.1"] * 768) + "]"
    with manager.engine.begin() as conn:
        repo = conn.execute(
            sa.text(f"INSERT INTO {schema}.repositories (path, name) VALUES ('/r', 'r') RETURNING id")
        ).scalar()
        file_id = conn.execute(
            sa.text(
                f"INSERT INTO {schema}.code_files (repository_id, path, relative_path) "
                "VALUES (:r, '/r/a.py', 'a.py') RETURNING id"
            ),
            {"r": repo},
        ).scalar()
        conn.execute(
            sa.text(
                f"INSERT INTO {schema}.code_chunks (code_file_id, content, embedding) "
                "VALUES (:f, 'x', CAST(:v AS workspace_extensions.vector))"
            ),
            {"f": file_id, "v": vector},
        )
        conn.execute(sa.text(f"INSERT INTO {schema}.indexing_jobs (project_id) VALUES ('usable')"))
        assert conn.execute(sa.text(f"SELECT status FROM {schema}.indexing_jobs")).scalar() == "pending"
    with pytest.raises(sa.exc.IntegrityError, match="ck_indexing_jobs_status"), manager.engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO {schema}.indexing_jobs (project_id, status) VALUES ('usable', 'bogus')"))
    with manager.engine.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM {schema}.repositories"))
        assert conn.execute(sa.text(f"SELECT count(*) FROM {schema}.code_chunks")).scalar() == 0
        assert conn.execute(sa.text(f"SELECT count(*) FROM {schema}.indexing_jobs")).scalar() == 1


def test_bootstrap_creates_registry_and_extension(manager: WorkspaceManager) -> None:
    assert manager.bootstrap(force=True) == "workspace_extensions"
    with manager.engine.connect() as conn:
        ext_schema = conn.execute(
            sa.text(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                "WHERE e.extname = 'vector'"
            )
        ).scalar()
        assert ext_schema == "workspace_extensions"
        tables = set(
            conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'project_registry'")).scalars()
        )
    assert tables == {
        "workspace_config",
        "workspace_registry_version",
        "reference_catalog",
        "spare_schemas",
        "pool_releases",
    }
    assert manager.projects() == []


# ---------------------------------------------------------------------------- upgrades
@pytest.mark.parametrize("older", MAIN_REVISIONS[:-1])
def test_upgrade_from_every_older_revision_equals_fresh(
    manager: WorkspaceManager, tmp_path: Path, reference_catalog: dict[str, Any], older: str
) -> None:
    old = WorkspaceManager(manager.engine, truncated_chain(tmp_path / "c", older))
    assert old.ensure_detailed("upgrade-me").to_revision == older
    old.close()
    assert schema_version(manager.engine, "project_upgrade_me") == older
    assert registry_row(manager.engine, "upgrade-me")["revision"] == older  # type: ignore[index]
    assert {s.project_id: s.state for s in manager.status()} == {"upgrade-me": "behind"}

    result = manager.ensure_detailed("upgrade-me")
    assert (result.action, result.from_revision, result.to_revision) == ("upgraded", older, HEAD)
    assert diff(reference_catalog, catalog(manager.engine, "project_upgrade_me")) == []
    row = registry_row(manager.engine, "upgrade-me")
    assert row is not None
    assert (row["revision"], row["last_action"], row["status"]) == (HEAD, "upgrade", "ready")
    assert row["last_duration_ms"] > 0
    assert {s.project_id: s.state for s in manager.status()} == {"upgrade-me": "at-head"}


def test_upgrade_from_a_schema_provisioned_by_plain_alembic(
    manager: WorkspaceManager, database_url: URL, reference_catalog: dict[str, Any]
) -> None:
    manager.bootstrap()
    done = run_alembic(database_url, "-x", "schema=project_by_alembic", "upgrade", MAIN_REVISIONS[1])
    assert done.returncode == 0, done.stderr
    assert schema_version(manager.engine, "project_by_alembic") == MAIN_REVISIONS[1]
    result = manager.ensure_detailed("by-alembic")
    assert (result.action, result.from_revision) == ("upgraded", MAIN_REVISIONS[1])
    assert diff(reference_catalog, catalog(manager.engine, "project_by_alembic")) == []
    assert registry_row(manager.engine, "by-alembic")["revision"] == HEAD  # type: ignore[index]


def test_downgrade_to_base_and_back(
    manager: WorkspaceManager, database_url: URL, reference_catalog: dict[str, Any]
) -> None:
    schema = manager.ensure("round-trip")
    done = run_alembic(database_url, "-x", f"schema={schema}", "downgrade", "base")
    assert done.returncode == 0, done.stderr
    assert schema_tables(manager.engine, schema) == {"alembic_version"}
    assert schema_version(manager.engine, schema) is None
    # The process cache still believes the schema is at head; verify=True reads the truth.
    assert manager.ensure("round-trip") == schema
    result = manager.ensure_detailed("round-trip", verify=True)
    assert (result.from_revision, result.to_revision) == (None, HEAD)
    assert diff(reference_catalog, catalog(manager.engine, schema)) == []
    assert registry_row(manager.engine, "round-trip")["revision"] == HEAD  # type: ignore[index]


def test_downgrade_one_step_and_back(
    manager: WorkspaceManager, database_url: URL, reference_catalog: dict[str, Any]
) -> None:
    schema = manager.ensure("one-step")
    done = run_alembic(database_url, "-x", f"schema={schema}", "downgrade", "-1")
    assert done.returncode == 0, done.stderr
    assert schema_version(manager.engine, schema) == MAIN_REVISIONS[-2]
    fresh = WorkspaceManager(manager.engine, ALEMBIC_INI)
    fresh.invalidate()
    result = fresh.ensure_detailed("one-step")
    assert (result.action, result.from_revision, result.to_revision) == ("upgraded", MAIN_REVISIONS[-2], HEAD)
    assert diff(reference_catalog, catalog(manager.engine, schema)) == []


# ----------------------------------------------------------------- refusing to change
def test_no_upgrade_on_a_behind_schema_raises_and_changes_nothing(manager: WorkspaceManager, tmp_path: Path) -> None:
    older = MAIN_REVISIONS[1]
    WorkspaceManager(manager.engine, truncated_chain(tmp_path / "c", older)).ensure("behind")
    before = catalog(manager.engine, "project_behind")
    row_before = registry_row(manager.engine, "behind")
    with pytest.raises(WorkspaceOutdated) as info:
        manager.ensure("behind", upgrade=False)
    err = info.value
    assert (err.project_id, err.schema, err.current, err.head) == ("behind", "project_behind", older, HEAD)
    assert f"is at revision {older}, behind head {HEAD}" in str(err)
    assert catalog(manager.engine, "project_behind") == before
    assert registry_row(manager.engine, "behind") == row_before
    # Not cached as ready: the next call (allowed to upgrade) does upgrade.
    assert manager.ensure_detailed("behind").action == "upgraded"


def test_no_upgrade_still_creates_a_missing_schema(manager: WorkspaceManager) -> None:
    assert manager.ensure("brand-new", upgrade=False) == "project_brand_new"
    assert schema_version(manager.engine, "project_brand_new") == HEAD


@pytest.mark.parametrize("verify", [False, True])
def test_unknown_revision_raises_and_changes_nothing(manager: WorkspaceManager, verify: bool) -> None:
    schema = manager.ensure("future")
    with manager.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {schema}.alembic_version SET version_num = '9999_from_the_future'"))
    before = catalog(manager.engine, schema)
    row_before = registry_row(manager.engine, "future")
    manager.invalidate()  # as a new process would see it
    with pytest.raises(UnknownRevision) as info:
        manager.ensure("future", verify=verify)
    assert info.value.schema == schema
    assert info.value.revision == "9999_from_the_future"
    assert "nothing was changed" in str(info.value)
    assert catalog(manager.engine, schema) == before
    assert registry_row(manager.engine, "future") == row_before
    with pytest.raises(UnknownRevision):  # not cached either
        manager.ensure("future")


# ------------------------------------------------------------------------------ cache
class CountingCursor(psycopg2.extensions.cursor):  # type: ignore[misc]
    """Every statement any cursor of the connection sends, raw DBAPI cursors included."""

    log: ClassVar[list[str]] = []

    def execute(self, query: Any, vars: Any = None) -> Any:
        CountingCursor.log.append(str(query))
        return super().execute(query, vars)


@pytest.fixture
def counted(engine: sa.Engine, database_url: URL) -> Iterator[tuple[WorkspaceManager, list[str], list[int]]]:
    """A manager whose engine counts every statement at the driver and every pool checkout."""
    counted_engine = sa.create_engine(database_url, connect_args={"cursor_factory": CountingCursor})
    checkouts: list[int] = []
    sa.event.listen(counted_engine, "checkout", lambda *a: checkouts.append(1))
    mgr = WorkspaceManager(counted_engine, ALEMBIC_INI)
    CountingCursor.log = []
    yield mgr, CountingCursor.log, checkouts
    mgr.close()
    counted_engine.dispose()


def test_repeat_ensure_sends_nothing_and_checks_out_no_connection(
    counted: tuple[WorkspaceManager, list[str], list[int]],
) -> None:
    mgr, log, checkouts = counted
    assert mgr.ensure("hot") == "project_hot"
    assert log and checkouts  # the first call did talk to the database
    log.clear()
    checkouts.clear()
    for _ in range(100):
        assert mgr.ensure("hot") == "project_hot"
    assert mgr.ensure_detailed("hot").action == "cached"
    assert log == []
    assert checkouts == []


def test_verify_sends_exactly_one_statement(counted: tuple[WorkspaceManager, list[str], list[int]]) -> None:
    mgr, log, checkouts = counted
    mgr.ensure("checked")
    mgr.ensure("checked", verify=True)  # opens the probe connection
    log.clear()
    checkouts.clear()
    for _ in range(3):
        assert mgr.ensure_detailed("checked", verify=True).action == "verified"
    assert log == ['SELECT version_num FROM "project_checked".alembic_version'] * 3
    assert checkouts == []


def test_verify_leaves_the_callers_pool_transactional(engine: sa.Engine) -> None:
    """The probe runs in autocommit; none of that may leak into connections the application borrows."""
    for _ in range(2):
        mgr = WorkspaceManager(engine, ALEMBIC_INI)
        mgr.ensure("probe-leak", verify=True)
        mgr.ensure("probe-leak", verify=True)
        mgr.close()
    held = [engine.connect() for _ in range(12)]  # every pooled connection, and then some
    try:
        for i, conn in enumerate(held):
            with conn.begin() as tx:
                conn.execute(sa.text(f"CREATE TABLE public.leak_{i} (x int)"))
                tx.rollback()
    finally:
        for conn in held:
            conn.close()
    with engine.connect() as conn:
        leaked = conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE tablename LIKE 'leak%'")).scalars()
        assert list(leaked) == []


def test_a_new_manager_on_a_provisioned_schema_reads_it_in_one_transaction(
    manager: WorkspaceManager, counted: tuple[WorkspaceManager, list[str], list[int]]
) -> None:
    manager.ensure("warm")
    mgr, log, _ = counted
    mgr.invalidate()
    result = mgr.ensure_detailed("warm")
    assert result.action == "current"
    assert result.path == "none"
    assert not any(s.lstrip().upper().startswith(("CREATE", "ALTER", "INSERT", "UPDATE")) for s in log), log


def test_verify_repairs_a_schema_dropped_behind_the_managers_back(manager: WorkspaceManager) -> None:
    schema = manager.ensure("vanish")
    with manager.engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    assert manager.ensure("vanish") == schema  # cached: no I/O, so it can't know
    assert not schema_exists(manager.engine, schema)
    assert manager.ensure("vanish", verify=True) == schema
    assert schema_version(manager.engine, schema) == HEAD
    assert registry_row(manager.engine, "vanish")["last_action"] == "create"  # type: ignore[index]


def test_clearing_the_process_caches_makes_every_manager_read_the_database_again(manager: WorkspaceManager) -> None:
    """cache.clear(), as the tests use it: the managers already made forget what they knew, as in a new
    process (here, a schema and the registry dropped behind their back are made again)."""
    schema = manager.ensure("forgotten")
    with manager.engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE; DROP SCHEMA project_registry CASCADE"))
    assert manager.ensure_detailed("forgotten").action == "cached"

    cache.clear()

    assert manager.ensure_detailed("forgotten").action == "created"
    assert schema_version(manager.engine, schema) == HEAD
    assert registry_row(manager.engine, "forgotten")["last_action"] == "create"  # type: ignore[index]


def test_drop_removes_schema_and_row_and_invalidates_the_cache(manager: WorkspaceManager) -> None:
    schema = manager.ensure("goner")
    assert manager.drop("goner") is True
    assert not schema_exists(manager.engine, schema)
    assert registry_row(manager.engine, "goner") is None
    assert manager.drop("goner") is False
    assert manager.ensure_detailed("goner").action == "created"
    assert schema_exists(manager.engine, schema)


def test_drop_through_one_manager_invalidates_another_on_the_same_database(manager: WorkspaceManager) -> None:
    other = WorkspaceManager(manager.engine, ALEMBIC_INI)
    other.ensure("shared")
    manager.drop("shared")
    assert other.ensure_detailed("shared").action == "created"
    other.close()


# ------------------------------------------------------------------------- atomicity
FAILING_UPGRADE = """
op.create_table("second", sa.Column("id", sa.Integer, primary_key=True))
op.execute("INSERT INTO no_such_table VALUES (1)")
"""


@pytest.mark.parametrize("online", [False, True], ids=["fast", "online"])
def test_a_failing_revision_leaves_no_schema_and_no_registry_row(
    engine: sa.Engine, chain_builder: ChainBuilder, online: bool
) -> None:
    extra = "workspace_online = True" if online else ""
    chain_builder.add("r1", 'op.create_table("first", sa.Column("id", sa.Integer, primary_key=True))', extra=extra)
    chain_builder.add("r2", FAILING_UPGRADE, extra=extra)
    mgr = WorkspaceManager(engine, chain_builder.ini)
    with pytest.raises(MigrationFailed) as info:
        mgr.ensure("atomic")
    assert info.value.schema == "project_atomic"
    assert "project_atomic" in str(info.value)
    assert "no_such_table" in str(info.value)
    assert "rolled back" in str(info.value)
    assert not schema_exists(engine, "project_atomic")
    assert registry_row(engine, "atomic") is None
    with pytest.raises(MigrationFailed):  # nothing was cached
        mgr.ensure("atomic")


def test_a_failing_upgrade_leaves_the_schema_at_its_old_revision(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain_builder.add("r1", 'op.create_table("first", sa.Column("id", sa.Integer, primary_key=True))')
    WorkspaceManager(engine, chain_builder.ini).ensure("half")
    before = catalog(engine, "project_half")
    row_before = registry_row(engine, "half")
    chain_builder.add("r2", FAILING_UPGRADE)
    bigger = ChainBuilder(chain_builder.root.with_name("bigger"))
    for path in chain_builder.versions.glob("*.py"):
        shutil.copy(path, bigger.versions / path.name)
    with pytest.raises(MigrationFailed, match="project_half"):
        WorkspaceManager(engine, bigger.ini).ensure("half")
    assert catalog(engine, "project_half") == before
    assert registry_row(engine, "half") == row_before


def test_a_revision_raising_a_python_error_rolls_back(engine: sa.Engine, chain_builder: ChainBuilder) -> None:
    chain_builder.add("r1", 'op.create_table("first", sa.Column("id", sa.Integer, primary_key=True))')
    chain_builder.add(
        "r2",
        'op.create_table("second", sa.Column("id", sa.Integer, primary_key=True))\nraise RuntimeError("boom")',
    )
    mgr = WorkspaceManager(engine, chain_builder.ini)
    with pytest.raises(MigrationFailed, match="boom") as info:
        mgr.ensure("python-error")
    assert info.value.schema == "project_python_error"
    assert not schema_exists(engine, "project_python_error")
    assert registry_row(engine, "python-error") is None


# ---------------------------------------------------------------------- configuration
def test_config_from_environment_then_cwd(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORKSPACE_TOOL_CONFIG", str(ALEMBIC_INI))
    assert WorkspaceManager(engine).chain.config_path == ALEMBIC_INI
    monkeypatch.delenv("WORKSPACE_TOOL_CONFIG")
    monkeypatch.chdir(ROOT)
    assert WorkspaceManager(engine).chain.config_path == ALEMBIC_INI
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=r"alembic config not found: alembic.ini \(./alembic.ini\)"):
        WorkspaceManager(engine)
    with pytest.raises(ConfigurationError, match="alembic config not found"):
        WorkspaceManager(engine, tmp_path / "nope.ini")


def test_a_chain_with_two_heads_is_refused(engine: sa.Engine, chain_builder: ChainBuilder) -> None:
    chain_builder.add("a1", "pass").add("b1", "pass", down_revision=None)
    with pytest.raises(ConfigurationError, match="has 2 heads"):
        WorkspaceManager(engine, chain_builder.ini)


def test_sqlite_engine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="needs PostgreSQL, not sqlite"):
        WorkspaceManager(sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}"), ALEMBIC_INI)


def test_non_string_id_is_refused_even_on_the_cached_path(manager: WorkspaceManager) -> None:
    from workspace_tool import InvalidProjectId

    for value in (["demo"], None, 5):
        with pytest.raises(InvalidProjectId):
            manager.ensure(value)  # type: ignore[arg-type]


# ------------------------------------------------------------------ schemas made by hand


def test_a_hand_made_schema_with_other_tables_is_refused_unless_adopted(manager: WorkspaceManager) -> None:
    engine = manager.engine
    make_schema_by_hand(engine, "project_handmade", "invoices", "customers")

    with pytest.raises(UnmanagedSchema) as refused:
        manager.ensure("handmade")

    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(
        "schema project_handmade already exists and holds 2 relation(s) (customers, invoices) but no alembic_version"
    )
    assert "`workspace-tool ensure handmade --adopt`, or adopt=True" in message
    assert "`workspace-tool drop handmade --yes`" in message
    assert schema_tables(engine, "project_handmade") == {"invoices", "customers"}  # nothing changed
    assert registry_row(engine, "handmade") is None
    with pytest.raises(UnmanagedSchema):  # the refusal is not cached either way
        manager.ensure("handmade")

    adopted = manager.ensure_detailed("handmade", adopt=True)

    assert (adopted.action, adopted.to_revision) == ("created", HEAD)
    assert schema_tables(engine, "project_handmade") == TABLES | {"invoices", "customers"}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT note FROM project_handmade.invoices")).scalar() == "kept"
    row = registry_row(engine, "handmade")
    assert row is not None and (row["revision"], row["status"], row["last_action"]) == (HEAD, "ready", "adopt")
    manager.invalidate()
    assert manager.ensure_detailed("handmade").action == "current"  # adopted: an ordinary project now


def test_an_empty_existing_schema_is_provisioned_as_before(manager: WorkspaceManager) -> None:
    make_schema_by_hand(manager.engine, "project_blank")
    result = manager.ensure_detailed("blank")
    assert (result.action, result.to_revision) == ("created", HEAD)
    assert schema_tables(manager.engine, "project_blank") == TABLES
    row = registry_row(manager.engine, "blank")
    assert row is not None and row["last_action"] == "create"
