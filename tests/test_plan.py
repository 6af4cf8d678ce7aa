"""Planning a schema's migration (workspace_tool.schema.plan), with no database: which statements, in which
parts, guarded how, on plain PostgreSQL and on a distributed database's flavor; and the text `--sql`
renders, which is what the senders send. No fixture here touches a server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.chains import ALEMBIC_INI

from workspace_tool import flavor as flavors
from workspace_tool.chain import Chain, Step
from workspace_tool.chain.plan import Path as PlanPath
from workspace_tool.chain.plan import StepKind
from workspace_tool.dberrors import STATE_CHANGED, unreachable_node
from workspace_tool.flavor import Flavor
from workspace_tool.flavor.citus import NOT_TENANT, PROPAGATE_SET, TENANT, Citus
from workspace_tool.registry.migrations import r0005_expect_version
from workspace_tool.registry.table import RegistryAction
from workspace_tool.schema.plan import BEGIN, COMMIT, Expected, RegistryRecord, SchemaPlan

EXT = "workspace_extensions"
PLAIN, DISTRIBUTED = Flavor(EXT), Citus(EXT)
LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('workspace_tool:project_acme', 0));"
SEARCH_PATH = 'SET LOCAL search_path TO "project_acme", "workspace_extensions";'
BOUND = "SELECT set_config('lock_timeout', '5000ms', true);"  # the lock's wait bounded by a query (Citus)
CREATE_TABLE = "CREATE TABLE IF NOT EXISTS alembic_version (version_num VARCHAR(32) NOT NULL);"
INSERT_V1 = "INSERT INTO alembic_version (version_num) VALUES ('v1') RETURNING alembic_version.version_num;"
MOVE_V2 = "UPDATE alembic_version SET version_num='v2' WHERE alembic_version.version_num = 'v1';"
MOVE_V3 = "UPDATE alembic_version SET version_num='v3' WHERE alembic_version.version_num = 'v2';"

FROM_BASE = Step(StepKind.COMPILED, None, "v1", (CREATE_TABLE, "CREATE TABLE a (id int);", INSERT_V1))
V1_TO_V2 = Step(StepKind.COMPILED, "v1", "v2", ("ALTER TABLE a ADD COLUMN b int;", MOVE_V2))
V2_TO_V3 = Step(StepKind.COMPILED, "v2", "v3", ("CREATE TABLE c (id int);", MOVE_V3))
CONCURRENTLY = Step(StepKind.NON_TRANSACTIONAL, "v1", "v2", ("CREATE INDEX CONCURRENTLY ix_b ON a (b);", MOVE_V2))


def record(revision: str | None = "v3", action: RegistryAction = RegistryAction.UPGRADE) -> RegistryRecord:
    return RegistryRecord("acme", revision, action, PlanPath.FAST)


def upgrade(flavor: Flavor, **changes: Any) -> SchemaPlan:
    """v1 -> v3 of an existing schema, as a batch read saw it at v1 (the fleet's fast lane)."""
    steps = (V1_TO_V2, V2_TO_V3)
    plan = SchemaPlan(
        "project_acme", flavor, steps, lock_timeout_ms=5000, record=record(), expected=Expected(True, "v1")
    )
    return replace(plan, **changes)


def guard(version: str | None, found: str) -> str:
    return f"project_registry.expect_version({found}, 'project_acme', {'NULL' if version is None else repr(version)})"


# ------------------------------------------------------------------------------- one transaction
def test_plain_upgrade_guards_with_the_statement_that_moves_the_version() -> None:
    statements = upgrade(PLAIN).statements()

    assert statements[:3] == ["SET LOCAL lock_timeout = '5000ms';", LOCK, SEARCH_PATH]
    assert statements[3:6] == [*V1_TO_V2.statements, V2_TO_V3.statements[0]]  # the last version move is cut
    assert MOVE_V3 not in statements
    last = statements[-1]
    # the registry row the batch read saw, rewritten per row of `moved` (no row: the guard fails)
    assert last.startswith(f"WITH moved AS ({MOVE_V3[:-1]} RETURNING 1), recorded AS (UPDATE ")
    assert last.endswith(f"SELECT {guard('v1', 'EXISTS (SELECT 1 FROM recorded)')};")
    assert len(statements) == 7
    assert [s for s in statements if "expect_version" in s] == [last]  # one guard, at the end


def test_a_distributed_flavor_checks_the_version_before_its_first_move_and_writes_a_plain_registry_row() -> None:
    statements = upgrade(DISTRIBUTED).statements()

    # the lock first, its wait bounded by a query; then the lock timeout's SETs and the search_path, before any
    # worker is reached
    assert statements[:5] == [BOUND, LOCK, PROPAGATE_SET + ";", "SET LOCAL lock_timeout = '5000ms';", SEARCH_PATH]
    # under the lock, the first version move is guarded: it fails unless the row moved and the whole version
    # table was the expected revision (no row, or another row beside it, fails), in one statement, which Citus
    # sends to the worker whole; a schema at another revision rolls all of it back, the DDL before it too
    held = "coalesce((SELECT bool_and(version_num = 'v1') FROM alembic_version), false)"
    guarded = (
        f"WITH moved AS ({MOVE_V2[:-1]} RETURNING 1) SELECT {guard('v1', f'EXISTS (SELECT 1 FROM moved) AND {held}')};"
    )
    assert statements[5:9] == [V1_TO_V2.statements[0], guarded, *V2_TO_V3.statements]  # the later move as it is
    assert statements[-1].startswith("INSERT INTO project_registry.workspace_config")
    assert "WITH moved" not in statements[-1] and "expect_version" not in statements[-1]
    assert statements.count(SEARCH_PATH) == 1 and len(statements) == 10
    # a first move of another form: a plain check of the table before it
    odd_move = "UPDATE alembic_version SET version_num = 'v2';"
    odd = upgrade(DISTRIBUTED, steps=(Step(StepKind.COMPILED, "v1", "v2", (odd_move,)), V2_TO_V3)).statements()
    check = "SELECT " + guard("v1", "coalesce(bool_and(version_num = 'v1'), false)") + " FROM alembic_version;"
    assert odd[5:7] == [check, odd_move]


def test_a_distributed_flavor_sends_sets_together_queries_together_and_each_ddl_alone() -> None:
    """Citus replays a propagated SET's whole query string on the workers and forwards some DDL's: a round
    trip holds only SETs, or only queries, or one other statement; the statements stay in order."""
    statements = upgrade(DISTRIBUTED).statements()
    trips = DISTRIBUTED.round_trips(statements)

    assert [s for trip in trips for s in trip] == statements
    assert (
        trips
        == [
            [BOUND, LOCK],  # the lock, its wait bounded by a query
            statements[2:5],  # the SETs: the lock timeout (propagated) and the search_path
            ["ALTER TABLE a ADD COLUMN b int;"],  # each DDL alone
            [statements[6]],  # the first version move, guarded
            ["CREATE TABLE c (id int);"],
            [MOVE_V3, statements[-1]],  # the last version move and the registry row
        ]
    )
    odd = ["-- note\nSET LOCAL a = 1;", "set local b = 2;", "SET ROLE x;", "/* x */ select 1;", "DO $$ BEGIN END $$;"]
    assert DISTRIBUTED.round_trips(odd) == [
        odd[:2],  # SET LOCALs together, past a comment, in any case
        ["SET ROLE x;"],  # a session's SET alone: it would stay on a worker's connection
        ["/* x */ select 1;"],
        ["DO $$ BEGIN END $$;"],
    ]
    # the whole transaction: BEGIN starts the first queries' round trip (never a SET's: in a SET's text, every
    # worker would replay it, a WARNING there), COMMIT ends the last queries' (their text is never forwarded);
    # each alone after a SET or a DDL
    whole = DISTRIBUTED.round_trips([BEGIN, *statements, COMMIT])
    assert whole == [[BEGIN, *trips[0]], *trips[1:-1], [*trips[-1], COMMIT]]
    assert DISTRIBUTED.round_trips([BEGIN, SEARCH_PATH, COMMIT]) == [[BEGIN], [SEARCH_PATH], [COMMIT]]
    assert DISTRIBUTED.round_trips([BEGIN, "CREATE TABLE c (id int);", COMMIT]) == [
        [BEGIN],
        ["CREATE TABLE c (id int);"],
        [COMMIT],
    ]
    assert DISTRIBUTED.round_trips([BEGIN, LOCK, COMMIT]) == [[BEGIN, LOCK, COMMIT]]
    assert DISTRIBUTED.round_trips([BEGIN, COMMIT]) == [[BEGIN], [COMMIT]]
    assert PLAIN.round_trips(statements) == [statements]  # plain PostgreSQL: one batch


def test_the_guard_of_a_missing_schema_is_create_schema_and_a_distributed_one_is_a_tenant() -> None:
    created = record("v1", RegistryAction.CREATE)
    plain = SchemaPlan(
        "project_acme", PLAIN, (FROM_BASE,), create_schema=True, record=created, expected=Expected(False, None)
    )
    distributed = replace(plain, flavor=DISTRIBUTED)

    assert plain.guarded and distributed.guarded
    assert plain.statements()[1:3] == ['CREATE SCHEMA "project_acme";', SEARCH_PATH]
    assert distributed.statements()[1:4] == [TENANT + ";", 'CREATE SCHEMA "project_acme";', SEARCH_PATH]
    for plan in (plain, distributed):
        assert not any("expect_version" in s for s in plan.statements())  # CREATE SCHEMA fails if it appeared


@pytest.mark.parametrize(
    ("expected", "steps", "guarded"),
    [
        (Expected(True, "v1"), (V1_TO_V2, V2_TO_V3), True),
        (Expected(True, None), (V1_TO_V2,), False),  # an empty schema: nothing to compare the version with
        (Expected(True, "v0"), (FROM_BASE,), False),  # a range that inserts the version row moves none
        (None, (V1_TO_V2,), False),  # the careful path: it read the state under the lock itself
    ],
)
def test_which_plans_are_guarded(expected: Expected | None, steps: tuple[Step, ...], guarded: bool) -> None:
    for flavor in (PLAIN, DISTRIBUTED):
        plan = SchemaPlan("project_acme", flavor, steps, record=record(), expected=expected)
        assert plan.guarded is guarded
        assert plan.batchable is (guarded and flavor.batches)
        assert any("expect_version" in s for s in plan.statements()) is guarded


def test_only_a_flavor_that_batches_sends_a_plan_as_one_batch() -> None:
    assert upgrade(PLAIN).batch() == "\n".join([BEGIN, *upgrade(PLAIN).statements(), COMMIT])
    with pytest.raises(ValueError, match="one batch"):
        upgrade(DISTRIBUTED).batch()
    with pytest.raises(ValueError, match="one batch"):
        upgrade(PLAIN, expected=None).batch()  # unguarded


def test_grants_come_before_the_registry_row_and_scratch_plans_take_no_lock() -> None:
    grants = ('GRANT USAGE ON SCHEMA "project_acme" TO "app"',)
    plan = upgrade(PLAIN, grants=grants, expected=None)
    assert plan.statements()[-2:-1] == [grants[0] + ";"]
    assert plan.statements()[-1].startswith("INSERT INTO project_registry.workspace_config")

    scratch = SchemaPlan("project_acme", DISTRIBUTED, (FROM_BASE,), lock=False, create_schema=True)
    assert scratch.statements() == [
        TENANT + ";",
        'CREATE SCHEMA "project_acme";',
        SEARCH_PATH,
        *FROM_BASE.statements,
    ]


# ------------------------------------------------------------------------------- parts
def test_parts_around_a_step_that_cannot_run_in_a_transaction() -> None:
    plan = SchemaPlan(
        "project_acme",
        PLAIN,
        (FROM_BASE, CONCURRENTLY, V2_TO_V3),
        lock_timeout_ms=1000,
        create_schema=True,
        grants=('GRANT USAGE ON SCHEMA "project_acme" TO "app"',),
        record=record("v3", RegistryAction.CREATE),
    )
    first, outside, last = plan.parts()

    assert not plan.in_one_transaction
    assert isinstance(first, SchemaPlan) and isinstance(last, SchemaPlan) and isinstance(outside, Step)
    assert (first.create_schema, first.steps, first.grants) == (True, (FROM_BASE,), ())
    assert first.record is not None and first.record.revision == "v1"  # the revision the part reaches
    assert outside.statements == ("CREATE INDEX CONCURRENTLY ix_b ON a (b);",)  # its version row moved after
    assert not last.create_schema and last.grants == plan.grants and last.record == plan.record
    assert [s.statements for s in last.steps] == [(MOVE_V2,), V2_TO_V3.statements]
    assert plan.session_settings() == [
        'SET search_path TO "project_acme", "workspace_extensions";',
        "SET lock_timeout = '1000ms';",
    ]
    assert last.recording_earlier(12.5).record == RegistryRecord(
        "acme", "v3", RegistryAction.CREATE, PlanPath.FAST, 12.5
    )
    with pytest.raises(ValueError, match="no fixed statements"):
        plan.statements()


def test_a_migration_starting_with_the_outside_step_has_no_empty_first_part() -> None:
    plan = SchemaPlan("project_acme", PLAIN, (CONCURRENTLY,), record=record("v2"))
    outside, last = plan.parts()
    assert isinstance(outside, Step) and isinstance(last, SchemaPlan)
    assert [s.statements for s in last.steps] == [(MOVE_V2,)]


# ------------------------------------------------------------------------------- the claim
def test_a_claim_is_the_lock_then_one_statement_then_the_grants() -> None:
    chain_of = Step(StepKind.CLAIM, None, "v3", spare_of="fingerprint")
    grants = ('GRANT USAGE ON SCHEMA "project_acme" TO "app"',)
    plan = SchemaPlan(
        "project_acme",
        PLAIN,
        (chain_of,),
        lock_timeout_ms=100,
        grants=grants,
        record=record("v3", RegistryAction.CREATE),
    )

    assert plan.claims
    claim, granted = plan.units()
    assert plan.prelude() == ["SET LOCAL lock_timeout = '100ms';", LOCK]
    assert isinstance(claim, str)
    assert claim.startswith(
        "WITH claimed AS MATERIALIZED (SELECT 1 FROM project_registry.claim_spare('project_acme', 'v3', "
        "'fingerprint') AS c(ok) WHERE c.ok), recorded AS (INSERT INTO project_registry.workspace_config"
    )
    assert "FROM claimed ON CONFLICT" in claim and claim.endswith("SELECT last_duration_ms FROM recorded;")
    assert granted == grants[0] + ";"
    with pytest.raises(ValueError, match="needs a record"):
        SchemaPlan("project_acme", PLAIN, (chain_of,)).units()


# ------------------------------------------------------------------------------- rendering
def test_render_is_the_batch_sent_or_the_statements_sent_one_by_one() -> None:
    for flavor in (PLAIN, DISTRIBUTED):
        plan = upgrade(flavor)
        rendered = plan.render(Chain.load(ALEMBIC_INI), "project_acme: v1 -> v3")
        assert rendered.splitlines()[0] == "-- project_acme: v1 -> v3"
        sent = "\n".join([BEGIN, *plan.statements(), COMMIT])  # send_batch's, or send.run's one at a time
        assert rendered == "-- project_acme: v1 -> v3\n" + sent + "\n"
    assert upgrade(PLAIN).render(Chain.load(ALEMBIC_INI)) == upgrade(PLAIN).batch() + "\n"


def test_render_of_parts_holds_the_session_lock_and_puts_the_session_back() -> None:
    plan = SchemaPlan(
        "project_acme", PLAIN, (FROM_BASE, CONCURRENTLY), lock_timeout_ms=1000, create_schema=True, record=record("v2")
    )
    lines = plan.render(Chain.load(ALEMBIC_INI)).splitlines()

    assert lines[1] == "SELECT pg_advisory_lock(hashtextextended('workspace_tool:project_acme', 0));"
    assert lines[-1] == "SELECT pg_advisory_unlock(hashtextextended('workspace_tool:project_acme', 0));"
    assert lines.count(BEGIN) == 2 and lines.count(COMMIT) == 2
    at = lines.index("CREATE INDEX CONCURRENTLY ix_b ON a (b);")
    assert lines[at - 2 : at] == plan.session_settings()
    assert lines[at + 1 : at + 3] == ["RESET search_path;", "RESET lock_timeout;"]
    assert lines[at + 3] == BEGIN


def test_an_online_step_is_rendered_offline_for_review() -> None:
    chain = Chain.load(ALEMBIC_INI)
    online = Step(StepKind.ONLINE, chain.revisions[0], chain.revisions[1])
    plan = SchemaPlan("project_acme", PLAIN, (online,), record=record(chain.revisions[1]))
    lines = plan.render(chain).splitlines()
    assert (
        f"-- {chain.revisions[0]} -> {chain.revisions[1]} runs online through Alembic; rendered offline"
        in "\n".join(lines)
    )
    assert any(line.startswith("CREATE TABLE code_chunks") for line in lines)
    assert not plan.compiled and not plan.batchable


# ------------------------------------------------------------------------------- the flavors
def test_the_flavors_answer_what_differs() -> None:
    assert (PLAIN.batches, PLAIN.separate_version_check, PLAIN.spares_refused) == (True, False, None)
    assert (DISTRIBUTED.batches, DISTRIBUTED.separate_version_check) == (False, True)
    assert DISTRIBUTED.spares_refused == "the database runs Citus, where spares are not supported"
    assert PLAIN.before_project_schema() == () and DISTRIBUTED.before_project_schema() == (TENANT,)
    assert PLAIN.before_registry_schema() == () and DISTRIBUTED.before_registry_schema() == (NOT_TENANT,)
    assert PLAIN.lock_timeout_statements(10) == ["SET LOCAL lock_timeout = '10ms'"]
    assert DISTRIBUTED.lock_timeout_statements(10) == [PROPAGATE_SET, "SET LOCAL lock_timeout = '10ms'"]
    assert flavors.of_kind("citus", "x") == Citus("x") and flavors.of_kind("postgresql", "x") == Flavor("x")
    assert flavors.KIND_SQL.startswith("CASE WHEN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
    direct = DISTRIBUTED.with_direct(True)
    assert isinstance(direct, Citus) and direct.direct and direct.extension_schema == EXT
    assert direct.with_direct(False) == DISTRIBUTED


def test_an_unreachable_node_is_read_from_the_message_by_the_flavor_that_says_it() -> None:
    """dberrors translates failures with no flavor at hand: each flavor registered how it reads them."""
    new = "connection to the remote node postgres@10.0.0.7:5432 failed with the following error: refused"
    cached = "failure on connection marked as essential: 10.0.0.8:6432"
    assert unreachable_node(new) == "Citus worker 10.0.0.7:5432"
    assert unreachable_node(cached) == "Citus worker 10.0.0.8:6432"
    assert unreachable_node("server closed the connection unexpectedly") is None
    assert Flavor.unreachable_node(new) is None  # plain PostgreSQL has no other node


def test_the_guard_raises_the_sqlstate_the_fast_lane_tells_apart() -> None:
    """r0005's function raises dberrors.STATE_CHANGED: the one literal the library's constant stands for."""
    assert f"ERRCODE = '{STATE_CHANGED}'" in r0005_expect_version.EXPECT_VERSION
    assert Path(r0005_expect_version.__file__).name.startswith("r0005_")
