"""Connections that walk the fleet are replaced by new ones every ``recycle_after`` schemas, so that no
server backend caches the whole fleet's catalog (workspace_tool.recycling): a fleet run's workers, the
batched version reads, `check`, `status` and the warm pool's builders; and the results are the same."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from support.chains import ITEMS, UNIQUE, ChainBuilder
from support.cli import assert_one_line_error, run_cli
from support.data import add_rows
from support.db import schema_version

from workspace_tool import AsyncWorkspaceManager, WorkspaceManager, drift, fleet, recycling, spares
from workspace_tool.chain import Chain
from workspace_tool.errors import ConfigurationError
from workspace_tool.registry.inventory import read_versions_parallel
from workspace_tool.urls import async_url

# a2 records the backend that ran it, in the schema it migrates
RECORD_PID = 'op.execute("CREATE TABLE migrated_by AS SELECT pg_backend_pid() AS pid")'
IDS = [f"r{i}" for i in range(1, 10)]


def set_option(ini: Path, value: str) -> Path:
    """Set workspace_recycle_after in an alembic.ini's [alembic] section."""
    text = re.sub(r"(?m)^workspace_recycle_after = .*\n", "", ini.read_text())
    ini.write_text(text.replace("[alembic]\n", f"[alembic]\nworkspace_recycle_after = {value}\n", 1))
    Chain.forget(ini)
    return ini


@pytest.fixture
def pid_chain(chain_builder: ChainBuilder) -> Chain:
    """a1 creates items; a2 records pg_backend_pid() in a table of the schema it migrates."""
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")').add("a2", RECORD_PID, 'op.drop_table("migrated_by")')
    return Chain.load(chain_builder.ini)


@pytest.fixture
def at_a1(engine: sa.Engine, pid_chain: Chain) -> Chain:
    assert fleet.provision(engine, pid_chain, IDS, target="a1", jobs=2).ok
    return pid_chain


@pytest.fixture
def own_engine(database_url: URL) -> Iterator[sa.Engine]:
    """An engine of the test's own, whose every new backend is recorded in ``.info['pids']``."""
    engine = sa.create_engine(database_url, pool_size=4, max_overflow=4)
    pids: list[int] = []
    sa.event.listen(engine, "connect", lambda dbapi, record: pids.append(dbapi.get_backend_pid()))
    engine.info = {"pids": pids}  # type: ignore[attr-defined]
    yield engine
    engine.dispose()


def migrated_by(engine: sa.Engine, ids: list[str]) -> list[int]:
    """The backend that ran a2 in each project's schema, in the order of ``ids``."""
    with engine.connect() as conn:
        return [int(conn.execute(sa.text(f"SELECT pid FROM project_{p}.migrated_by")).scalar_one()) for p in ids]


def groups(pids: list[int]) -> list[int]:
    """Lengths of the runs of equal consecutive pids: [3, 3, 3] for three backends of three schemas each."""
    runs: list[int] = []
    for i, pid in enumerate(pids):
        if i and pid == pids[i - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


def alive(engine: sa.Engine, pids: set[int]) -> set[int]:
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE pid = ANY(:p)"), {"p": list(pids)})
        return set(found.scalars())


def test_a_worker_takes_a_new_backend_every_n_schemas(engine: sa.Engine, own_engine: sa.Engine, at_a1: Chain) -> None:
    report = fleet.upgrade(own_engine, at_a1, jobs=1, recycle_after=3)
    assert report.counts() == {"ok": 9, "failed": 0, "skipped": 0, "gone": 0}
    pids = migrated_by(engine, IDS)  # one worker: the schemas in order
    assert groups(pids) == [3, 3, 3] and len(set(pids)) == 3
    # the replaced connections were closed, not put back in the pool: their backends are gone
    assert not alive(engine, set(pids[:6]))


def test_without_recycling_one_backend_migrates_the_whole_run(
    engine: sa.Engine, own_engine: sa.Engine, at_a1: Chain
) -> None:
    fleet.upgrade(own_engine, at_a1, jobs=1, recycle_after=0)
    assert len(set(migrated_by(engine, IDS))) == 1


def test_recycling_changes_nothing_in_a_run_with_failures(
    engine: sa.Engine, own_engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    """The same fleet (2 of 6 schemas fail a2's unique index) upgraded with a new backend for every schema
    (failed ones too) and with one per job for the whole run: the same results, versions and registry rows."""
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")').add(
        "a2", UNIQUE, 'op.drop_index("ux_items_name", table_name="items")'
    )
    chain = Chain.load(chain_builder.ini)
    ids = [f"s{i}" for i in range(6)]
    assert fleet.provision(engine, chain, ids, target="a1", jobs=2).ok
    for p in ("s1", "s4"):
        add_rows(engine, p, "twice", "twice")

    pids = own_engine.info["pids"]  # type: ignore[attr-defined]

    def outcome(recycle_after: int) -> list[tuple[object, ...]]:
        own_engine.dispose()
        pids.clear()
        report = fleet.upgrade(own_engine, chain, jobs=2, recycle_after=recycle_after)
        with engine.connect() as conn:
            found = conn.execute(sa.text("SELECT project_id, status FROM project_registry.workspace_config"))
            rows: dict[str, str] = {row.project_id: row.status for row in found}
        return [
            (r.project_id, r.status, r.from_revision, r.to_revision, r.path, r.error, rows[r.project_id])
            for r in report.results
        ] + [(p, schema_version(engine, f"project_{p}")) for p in ids]

    recycled = outcome(1)
    assert len(pids) >= 1 + 6  # the planning connection, then a new one for each schema
    assert fleet.downgrade(engine, chain, target="a1", jobs=2).ok
    assert outcome(0) == recycled
    assert len(pids) <= 1 + 1 + 2  # planning, the version read, a connection per job
    assert [r[1] for r in recycled[:6]] == ["ok", "failed", "ok", "ok", "failed", "ok"]


def test_the_version_reads_take_a_new_backend_after_n_schemas(engine: sa.Engine, own_engine: sa.Engine) -> None:
    mgr = WorkspaceManager(engine)
    for p in IDS[:5]:
        mgr.ensure(p)
    schemas = [f"project_{p}" for p in IDS[:5]] * 2  # 10 reads, in batches of 2 on one connection
    pids = own_engine.info["pids"]  # type: ignore[attr-defined]

    versions = read_versions_parallel(own_engine, schemas, 1, recycle_after=4, batch_size=2)
    assert versions == {s: mgr.head for s in schemas}
    assert len(pids) == 3  # 4 schemas, 4 more, then the last 2: three backends
    assert not alive(engine, set(pids[:2]))

    pids.clear()
    assert read_versions_parallel(own_engine, schemas, 1, recycle_after=0, batch_size=2) == versions
    assert len(pids) == 1 or pids == []  # the connection the pool already held, or one new one
    mgr.close()


def test_check_and_status_read_the_same_on_recycled_connections(
    engine: sa.Engine, own_engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain_builder.copy_main_chain()
    mgr = WorkspaceManager(engine, chain_builder.ini)
    for p in IDS:
        mgr.ensure(p)
    chain = mgr.chain
    pids = own_engine.info["pids"]  # type: ignore[attr-defined]

    kept = drift.check(own_engine, chain, jobs=2, recycle_after=0)
    before = len(pids)
    recycled = drift.check(own_engine, chain, jobs=2, recycle_after=1)
    assert recycled.as_dict() == kept.as_dict() and recycled.ok and len(recycled.schemas) == len(IDS)
    assert len(pids) > before  # the recycled readers connected anew

    set_option(chain_builder.ini, "1")
    statuses = WorkspaceManager(own_engine, chain_builder.ini).status(jobs=2)
    before = len(pids)
    assert WorkspaceManager(own_engine, chain_builder.ini).status(jobs=2) == statuses
    assert len(pids) > before
    assert {s.project_id for s in statuses} == set(IDS) and {s.state for s in statuses} == {"at-head"}
    mgr.close()


def test_pool_fill_builds_spares_on_a_new_backend_every_n(
    engine: sa.Engine, own_engine: sa.Engine, pid_chain: Chain
) -> None:
    set_option(pid_chain.config_path, "2")
    chain = Chain.load(pid_chain.config_path)
    report = spares.fill(own_engine, chain, 5, jobs=1)
    assert report.built == 5
    with engine.connect() as conn:
        names = conn.execute(sa.text("SELECT schema_name FROM project_registry.spare_schemas ORDER BY created_at"))
        pids = [conn.execute(sa.text(f'SELECT pid FROM "{s}".migrated_by')).scalar_one() for s in names.scalars()]
    # the first spare is built alone (and checked); the other four, two per backend
    assert groups(pids[1:]) == [2, 2] and pids[3] != pids[2]


def test_the_alembic_ini_setting_and_the_cli_option(
    engine: sa.Engine, at_a1: Chain, url_string: str, database_url: URL
) -> None:
    ini = set_option(at_a1.config_path, "4")
    result = run_cli("--database-url", url_string, "-c", str(ini), "upgrade", "--all", "--jobs", "1")
    assert result.exit_code == 0, result.stderr
    assert groups(migrated_by(engine, IDS)) == [4, 4, 1]

    assert fleet.downgrade(engine, Chain.load(ini), target="a1", jobs=1).ok
    args = ["--database-url", url_string, "-c", str(ini), "upgrade", "--all", "--jobs", "1", "--recycle-after", "2"]
    assert run_cli(*args).exit_code == 0  # the option wins over alembic.ini
    assert groups(migrated_by(engine, IDS)) == [2, 2, 2, 2, 1]

    result = run_cli("--database-url", url_string, "-c", str(ini), "check", "--recycle-after", "1", "--json")
    assert result.exit_code == 0, result.stdout


def test_a_bad_setting_is_one_line_and_changes_nothing(engine: sa.Engine, at_a1: Chain, url_string: str) -> None:
    ini = set_option(at_a1.config_path, "many")
    result = run_cli("--database-url", url_string, "-c", str(ini), "upgrade", "--all")
    assert_one_line_error(result, "workspace_recycle_after = 'many'", "whole number of schemas")
    assert {schema_version(engine, f"project_{p}") for p in IDS} == {"a1"}
    with pytest.raises(ConfigurationError, match="--recycle-after"):
        fleet.upgrade(engine, Chain.load(ini), recycle_after=-1)
    assert recycling.resolve(Chain.load(ini), 7) == 7
    result = run_cli("--database-url", url_string, "-c", str(ini), "upgrade", "--all", "--recycle-after", "-1")
    assert result.exit_code == 2  # a usage error


def test_the_help_names_the_librarys_default() -> None:
    """The CLI doesn't import the library to show --help, so the default is written there: it must agree."""
    from workspace_tool.cli import main

    for command in ("upgrade", "downgrade", "check"):
        [option] = [p for p in main.commands[command].params if p.name == "recycle_after"]
        assert isinstance(option, click.Option) and option.help is not None
        assert option.help.endswith(f"else {recycling.DEFAULT_RECYCLE_AFTER}.")


def test_the_async_managers_status_gives_back_a_connection_that_read_too_many(
    engine: sa.Engine, database_url: URL, chain_builder: ChainBuilder
) -> None:
    """The async manager reads every version on its one connection: past workspace_recycle_after schemas,
    that connection is closed rather than put back in the pool."""
    chain_builder.copy_main_chain()
    set_option(chain_builder.ini, "3")
    mgr = WorkspaceManager(engine, chain_builder.ini)
    for p in IDS[:4]:
        mgr.ensure(p)

    async def scenario() -> tuple[list[int], list[list[str]]]:
        async_engine = create_async_engine(async_url(database_url), pool_size=1, max_overflow=0)
        pids: list[int] = []
        sa.event.listen(async_engine.sync_engine, "connect", lambda dbapi, record: pids.append(len(pids)))
        try:
            amgr = AsyncWorkspaceManager(async_engine, chain_builder.ini)
            seen = [[s.project_id for s in await amgr.status(IDS[:n])] for n in (2, 4, 2)]
            return pids, seen
        finally:
            await async_engine.dispose()

    connects, seen = asyncio.run(scenario())
    assert seen == [IDS[:2], IDS[:4], IDS[:2]]
    assert len(connects) == 2  # 2 schemas: kept; 4 more (6 >= 3): closed after; then a new one
    mgr.close()
