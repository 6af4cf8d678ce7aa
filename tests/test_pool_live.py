"""The warm pool while the application keeps working (issue 18): a claimed project has the privileges a
fresh build has at claim time (and `check` compares privileges); two releases of a rolling deploy both get
their first ensures from the pool; chains with revisions that can't run in a transaction are pooled (built
in parts, claimable only once complete); `pool fill` counts right while the application claims spares."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from support.chains import ALEMBIC_INI, TABLES, ChainBuilder, with_options
from support.concurrency import WAIT, Victim
from support.db import assert_consistent, catalog, schema_exists

from workspace_tool import NonTransactionalFailed, WorkspaceManager, drift, spares
from workspace_tool.chain import Chain
from workspace_tool.cli import main
from workspace_tool.managers import cache
from workspace_tool.schema.catalog import diff
from workspace_tool.verification import verify_fast_path

CHAIN = Chain.load(ALEMBIC_INI)
READER = "wst_pool_reader"  # a prefix: roles are the cluster's, shared by every worker's database
T1 = "op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))"
T2 = "op.create_table('t2', sa.Column('id', sa.Integer, primary_key=True))"


def cli(engine: sa.Engine, *args: str, config: Path = ALEMBIC_INI) -> Result:
    cache.clear()
    url = engine.url.render_as_string(hide_password=False)
    return CliRunner().invoke(main, ["--database-url", url, "-c", str(config), *args], prog_name="workspace-tool")


def privileges(engine: sa.Engine, schema: str) -> dict[str, Any]:
    """Who owns what in the schema and who may do what with it: the schema, its relations, functions and
    types (ACLs as stored, NULL shown as the built-in default)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT 'schema', '', pg_get_userbyid(n.nspowner), "
                "  coalesce(n.nspacl, acldefault('n', n.nspowner))::text "
                "FROM pg_namespace n WHERE n.nspname = :s "
                "UNION ALL SELECT 'relation ' || c.relkind::text, c.relname, pg_get_userbyid(c.relowner), "
                "  coalesce(c.relacl, acldefault((CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END)::\"char\", "
                "  c.relowner))::text "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :s AND c.relkind NOT IN ('i', 'I', 'c', 't') "
                "UNION ALL SELECT 'function', p.proname, pg_get_userbyid(p.proowner), "
                "  coalesce(p.proacl, acldefault('f', p.proowner))::text "
                "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = :s "
                "UNION ALL SELECT 'type', t.typname, pg_get_userbyid(t.typowner), "
                "  coalesce(t.typacl, acldefault('T', t.typowner))::text "
                "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = :s"
            ),
            {"s": schema},
        )
        return {f"{kind} {name}".strip(): (owner, acl) for kind, name, owner, acl in rows}


def readable_by(engine: sa.Engine, role: str, schema: str) -> int:
    """How many of the schema's tables ``role`` may SELECT from."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = :s AND c.relkind = 'r' AND has_table_privilege(:r, c.oid, 'SELECT')"
                ),
                {"s": schema, "r": role},
            ).scalar_one()
        )


@pytest.fixture
def reader(engine: sa.Engine) -> Iterator[str]:
    """A role of its own (tests in other workers' databases make theirs at the same time), and the current
    role's default privileges put back as they were at the end."""
    role = f"{READER}_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} NOLOGIN"))
    yield role
    with engine.begin() as conn:
        conn.execute(sa.text(f"ALTER DEFAULT PRIVILEGES REVOKE ALL ON TABLES FROM {role}"))
        conn.execute(sa.text(f"ALTER DEFAULT PRIVILEGES REVOKE ALL ON SEQUENCES FROM {role}"))
        conn.execute(sa.text(f"DROP OWNED BY {role}"))
        conn.execute(sa.text(f"DROP ROLE {role}"))


def default_privileges(engine: sa.Engine, change: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"ALTER DEFAULT PRIVILEGES {change}"))


# ----------------------------------------------------------------------------- 1. privileges
@pytest.mark.parametrize("change", ["revoke", "grant"])
def test_a_claimed_project_has_the_privileges_a_fresh_build_has_at_claim_time(
    engine: sa.Engine, reader: str, change: str
) -> None:
    if change == "revoke":  # granted when the spares were built, revoked before the claim
        default_privileges(engine, f"GRANT SELECT ON TABLES TO {reader}")
        assert spares.fill(engine, CHAIN, 2).built == 2
        default_privileges(engine, f"REVOKE SELECT ON TABLES FROM {reader}")
    else:  # granted after the spares were built
        assert spares.fill(engine, CHAIN, 2).built == 2
        default_privileges(engine, f"GRANT SELECT ON TABLES TO {reader}")
        default_privileges(engine, f"GRANT USAGE ON SEQUENCES TO {reader}")
    pooled = WorkspaceManager(engine, ALEMBIC_INI, warm_pool=2)
    fresh = WorkspaceManager(engine, ALEMBIC_INI)  # the pool off: built now

    assert fresh.ensure_detailed("fresh").path == "fast"
    first = pooled.ensure_detailed("first")  # no spare was built under today's default privileges: built
    assert first.path == "fast"
    assert privileges(engine, "project_first") == privileges(engine, "project_fresh")
    assert readable_by(engine, reader, "project_first") == (0 if change == "revoke" else len(TABLES))

    assert spares.status(engine, CHAIN).counts()["old privileges"] == 2
    report = spares.fill(engine, CHAIN, 2)  # the spares built under the old ones are replaced
    assert (report.dropped, report.built, report.ready) == (2, 2, 2)
    claimed = pooled.ensure_detailed("claimed")
    assert claimed.path == "pool"
    assert privileges(engine, "project_claimed") == privileges(engine, "project_fresh")
    assert drift.check(engine, CHAIN).ok


def test_spares_built_while_the_default_privileges_change_are_not_kept(engine: sa.Engine, reader: str) -> None:
    """A change committed while a spare is built: that spare is rolled back and built again."""
    changed: list[str] = []

    def change_once(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not changed and statement.startswith('CREATE SCHEMA "workspace_spare_'):
            changed.append(statement)
            with engine.begin() as other:
                other.execute(sa.text(f"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {reader}"))

    sa.event.listen(engine, "before_cursor_execute", change_once)
    try:
        report = spares.fill(engine, CHAIN, 1)
    finally:
        sa.event.remove(engine, "before_cursor_execute", change_once)
    assert changed and report.built == 1
    WorkspaceManager(engine, ALEMBIC_INI).ensure("fresh")
    assert WorkspaceManager(engine, ALEMBIC_INI, warm_pool=1).ensure_detailed("claimed").path == "pool"
    assert privileges(engine, "project_claimed") == privileges(engine, "project_fresh")
    assert readable_by(engine, reader, "project_claimed") == len(TABLES)


def test_check_compares_privileges(engine: sa.Engine, reader: str) -> None:
    mgr = WorkspaceManager(engine, ALEMBIC_INI)
    for project_id in ("granted", "revoked", "owned", "untouched"):
        mgr.ensure(project_id)
    mgr.ensure("with-owner-role", owner_role=f"{reader}_owner")  # the tool's own grants are expected
    with engine.begin() as conn:
        conn.execute(sa.text(f"GRANT SELECT ON project_granted.repositories TO {reader}"))
        conn.execute(sa.text("REVOKE UPDATE ON project_revoked.code_files FROM CURRENT_USER"))
        conn.execute(sa.text(f"ALTER TABLE project_owned.code_chunks OWNER TO {reader}"))
    report = drift.check(engine, CHAIN)
    problems = {c.project_id: c.problems for c in report.schemas}
    assert problems["untouched"] == [] and problems["with-owner-role"] == []
    [granted] = problems["granted"]
    assert granted.startswith("relations.repositories.acl: expected") and f"{reader}=SELECT/<owner>" in granted
    [revoked] = problems["revoked"]
    assert revoked.startswith("relations.code_files.acl: expected") and "UPDATE" in revoked
    assert any(p.startswith("relations.code_chunks.owner: expected None") for p in problems["owned"])

    # the default privileges changed: what a fresh build gives changed, so every project differs now
    default_privileges(engine, f"GRANT SELECT ON TABLES TO {reader}")
    after = drift.check(engine, CHAIN)
    assert not after.ok and all(any(".acl:" in p for p in c.problems) for c in after.schemas)
    shown = cli(engine, "check")
    assert shown.exit_code == 1 and "project_untouched" in shown.stdout
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP OWNED BY {reader}_owner"))
        conn.execute(sa.text(f"DROP ROLE {reader}_owner"))


# ------------------------------------------------------------------------- 2. rolling deploy
def test_during_a_rolling_deploy_both_releases_get_their_first_ensures_from_the_pool(
    engine: sa.Engine, tmp_path: Path
) -> None:
    old = ChainBuilder(tmp_path / "old").add("r1", T1)
    new = ChainBuilder(tmp_path / "new").add("r1", T1).add("r2", T2)
    old_chain, new_chain = Chain.load(old.ini), Chain.load(new.ini)

    fills = [spares.fill(engine, chain, 4) for chain in (old_chain, new_chain, old_chain, new_chain)]
    assert [(f.built, f.dropped) for f in fills] == [(4, 0), (4, 0), (0, 0), (0, 0)]  # no ping-pong

    status = spares.status(engine, new_chain)
    assert status.counts()["ready"] == 4 and status.counts()["other release"] == 4
    shown = cli(engine, "pool", "status", "--json", config=new.ini)
    releases = {(r["revision"], r["this"]): r["spares"] for r in json.loads(shown.stdout)["releases"]}
    assert releases == {("r1", False): 4, ("r2", True): 4}
    table = cli(engine, "pool", "status", config=old.ini)
    assert table.exit_code == 0 and "release r1 (this one): 4 ready" in table.stderr
    assert "release r2: 4 spare(s)" in table.stderr

    old_mgr = WorkspaceManager(engine, old.ini, warm_pool=4)
    new_mgr = WorkspaceManager(engine, new.ini, warm_pool=4)
    paths = [
        (m.ensure_detailed(f"{tag}-{i}").path, tag) for i in range(4) for m, tag in ((old_mgr, "old"), (new_mgr, "new"))
    ]
    assert paths == [("pool", "old"), ("pool", "new")] * 4
    assert set(assert_consistent(engine).values()) == {"r1", "r2"}

    # the old release is gone: once the grace has passed with no fill of its own, its spares go
    spares.fill(engine, old_chain, 2)
    with_options(new.ini, workspace_pool_grace="1")
    with_options(old.ini, workspace_pool_grace="1")
    time.sleep(1.2)
    assert spares.fill(engine, old_chain, 2).dropped == 0  # never drops spares ahead of it (r2: unknown to it)
    assert spares.fill(engine, Chain.load(new.ini), 2).dropped == 0  # the old release filled just now: kept
    time.sleep(1.2)
    report = spares.fill(engine, Chain.load(new.ini), 2)
    assert (report.dropped, report.built, report.ready) == (2, 0, 2)  # the old release's 2, its own kept
    assert spares.status(engine, Chain.load(new.ini)).counts()["other release"] == 0


# ---------------------------------------------------------- 3. revisions outside a transaction
OUTSIDE = (
    "with op.get_context().autocommit_block():\n"
    '    op.create_index("ix_items_name", "items", ["name"], postgresql_concurrently=True)'
)
ITEMS = "op.create_table('items', sa.Column('id', sa.Integer, primary_key=True), sa.Column('name', sa.Text))"


def outside_chain(builder: ChainBuilder) -> Chain:
    builder.add("r1", ITEMS, 'op.drop_table("items")')
    builder.add("r2", OUTSIDE, 'op.drop_index("ix_items_name", table_name="items")')
    builder.add("r3", "op.add_column('items', sa.Column('note', sa.Text))")
    return Chain.load(with_options(builder.ini, workspace_pool_size="2"))


def test_a_chain_with_a_revision_outside_a_transaction_is_pooled(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain = outside_chain(chain_builder)
    filled = cli(engine, "pool", "fill", config=chain_builder.ini)
    assert filled.exit_code == 0, filled.output
    assert spares.status(engine, chain).counts()["ready"] == 2
    assert WorkspaceManager(engine, chain_builder.ini).ensure_detailed("claimed").path == "pool"
    WorkspaceManager(engine, chain_builder.ini, warm_pool=0).ensure("fresh")
    assert diff(catalog(engine, "project_fresh"), catalog(engine, "project_claimed")) == []
    assert drift.check(engine, chain).ok
    [check] = verify_fast_path(engine, chain, cases=[]).checks
    assert check.kind == "pool" and check.identical, check.differences


def test_a_spare_left_half_built_is_never_claimed_and_the_next_fill_drops_it(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain = outside_chain(chain_builder)

    def crash(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "CONCURRENTLY" in statement and "CREATE INDEX" in statement:  # the process dies here
            with engine.connect() as admin:
                admin.execute(
                    sa.text("SELECT pg_terminate_backend(:p)"),
                    {"p": conn.connection.dbapi_connection.get_backend_pid()},
                )

    sa.event.listen(engine, "before_cursor_execute", crash)
    try:  # the build cut short says so, naming what it left (issue 18: a lost connection mid-build)
        with pytest.raises(NonTransactionalFailed, match="cut short") as raised:
            spares.fill(engine, chain, 1)
        assert raised.value.connection_lost
    finally:
        sa.event.remove(engine, "before_cursor_execute", crash)
    [left] = spares.status(engine, chain).spares
    assert left.state(chain) == "building" and schema_exists(engine, left.schema)

    assert WorkspaceManager(engine, chain_builder.ini).ensure_detailed("not-from-it").path != "pool"
    report = spares.fill(engine, chain, 1)
    assert (report.dropped, report.built, report.ready) == (1, 1, 1)
    assert not schema_exists(engine, left.schema)
    assert WorkspaceManager(engine, chain_builder.ini).ensure_detailed("from-a-whole-one").path == "pool"


# ------------------------------------------------------------- 4. while the application claims
def test_fill_counts_the_spares_claimed_while_it_runs(engine: sa.Engine) -> None:
    assert spares.fill(engine, CHAIN, 3).built == 3
    mgr = WorkspaceManager(engine, ALEMBIC_INI, warm_pool=3)
    claimed: list[str] = []

    def claim_after_the_count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not claimed and "count(*) FROM project_registry.spare_schemas" in statement:
            claimed.append(str(mgr.ensure_detailed("while-filling").path))  # another connection, committed

    sa.event.listen(engine, "after_cursor_execute", claim_after_the_count)
    try:
        report = spares.fill(engine, CHAIN, 4)
    finally:
        sa.event.remove(engine, "after_cursor_execute", claim_after_the_count)
    assert claimed == ["pool"]
    assert report.built == 1 and report.claimed == 1
    assert report.ready == spares.status(engine, CHAIN).ready == 3  # not the 4 it counted on


def test_check_while_a_spare_is_claimed(engine: sa.Engine) -> None:
    """A spare claimed between check's listing and its comparison is no spare any more, nor a problem."""
    assert spares.fill(engine, CHAIN, 2).built == 2
    mgr = WorkspaceManager(engine, ALEMBIC_INI, warm_pool=2)
    claimed: list[str] = []

    def claim_once(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not claimed and "md5(string_agg(line" in statement:
            claimed.append(str(mgr.ensure_detailed("during-check").path))

    sa.event.listen(engine, "before_cursor_execute", claim_once)
    try:
        report = drift.check(engine, CHAIN)
    finally:
        sa.event.remove(engine, "before_cursor_execute", claim_once)
    assert claimed == ["pool"]
    assert report.ok, [(s.schema, s.problems) for s in report.failing]


def test_fill_reads_only_its_own_spare_while_the_application_drops_a_project(engine: sa.Engine) -> None:
    """The first spare of a fill is searched for its first name (``rename_and_scan``), deparsing its
    defaults, constraints, triggers and rules: only its own. A project being dropped meanwhile (its DROP
    SCHEMA not committed yet, holding its relations' locks) is never touched, so the fill doesn't wait for
    it. (It did: the deparsing ran on every row of those catalogs, before the join kept the spare's, and
    when such a project's drop committed under it the fill could fail with "could not open relation with
    OID": what the live soak found, tests/soak.py.)"""
    WorkspaceManager(engine, ALEMBIC_INI).ensure("being-dropped")
    dropping = engine.connect()
    transaction = dropping.begin()
    dropping.execute(sa.text("DROP SCHEMA project_being_dropped CASCADE"))
    fill = Victim(lambda: spares.fill(engine, CHAIN, 1))
    fill.start()
    try:
        with engine.connect() as admin:
            deadline = time.monotonic() + WAIT
            while fill.is_alive() and not blocked(admin) and time.monotonic() < deadline:
                time.sleep(0.02)
            waited = blocked(admin)
    finally:
        transaction.commit()  # the drop commits: a fill waiting on its locks goes on, and fails
        dropping.close()
    fill.finish()
    assert not waited, "the fill waited for the locks of a project being dropped"
    assert fill.error is None, fill.error
    assert spares.status(engine, CHAIN).ready == 1


def blocked(admin: sa.Connection) -> bool:
    """Whether a session of this database waits for a lock on a relation."""
    admin.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
    return bool(
        admin.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE NOT l.granted AND l.locktype = 'relation' AND d.datname = current_database())"
            )
        ).scalar()
    )


def test_pool_fill_with_the_pool_off_warns_that_nothing_claims_them(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    filled = cli(engine, "pool", "fill", "--size", "1")  # alembic.ini: no workspace_pool_size
    assert filled.exit_code == 0, filled.output
    [warning] = [line for line in filled.stderr.splitlines() if line.startswith("Warning:")]
    assert "workspace_pool_size is 0" in warning and "set workspace_pool_size = N" in warning
    assert spares.status(engine, CHAIN).ready == 1

    on = with_options(chain_builder.copy_main_chain().ini, workspace_pool_size="1")
    quiet = cli(engine, "pool", "fill", "--size", "2", config=on)
    assert quiet.exit_code == 0 and "Warning:" not in quiet.stderr


def test_a_bad_grace_is_one_line_and_changes_nothing(engine: sa.Engine, chain_builder: ChainBuilder) -> None:
    ini = with_options(chain_builder.copy_main_chain().ini, workspace_pool_size="1", workspace_pool_grace="soon")
    for command in (["pool", "fill"], ["pool", "status"]):
        shown = cli(engine, *command, config=ini)
        assert shown.exit_code == 1 and shown.stdout == "" and shown.stderr.count("\n") == 1, shown.output
        assert shown.stderr.startswith("Error: workspace_pool_grace = 'soon'") and "number of seconds" in shown.stderr
    assert spares.status(engine, CHAIN).spares == []
