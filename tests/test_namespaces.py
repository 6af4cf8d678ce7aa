"""Two chains in one database, each in its own namespace (alembic.ini workspace_registry_schema and
workspace_schema_prefix): what one chain does leaves the other's schemas, registry rows, versions and spares
as they were; a command pointed at the other chain's project refuses in one line; bad values are one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from support.chains import ALEMBIC_INI, ChainBuilder
from support.cli import assert_one_line_error
from support.db import schema_tables, schema_version

from workspace_tool import InvalidNamespace, Namespace, OtherNamespace, WorkspaceManager, drift, fleet, spares
from workspace_tool.chain import Chain
from workspace_tool.cli import main
from workspace_tool.managers import cache
from workspace_tool.namespace import DEFAULT

ITEMS = 'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True))'
NOTES = 'op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True), sa.Column("body", sa.Text))'
COLOR = 'op.add_column("notes", sa.Column("color", sa.Text))'
APP = Namespace("app_registry", "app_")


def set_options(ini: Path, **options: str) -> Path:
    """Put options in the [alembic] section of an alembic.ini (the chain is read again)."""
    lines = "".join(f"{key} = {value}\n" for key, value in options.items())
    ini.write_text(ini.read_text().replace("[alembic]\n", f"[alembic]\n{lines}", 1))
    Chain.forget(ini)
    return ini


def cli(url: str, ini: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--database-url", url, "-c", str(ini), *args])


def drop_namespaces(engine: sa.Engine) -> None:
    """Drop what the other namespaces made (reset_database drops the default one's)."""
    with engine.begin() as conn:
        names = conn.execute(
            sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'app\\_%' OR nspname LIKE 'mine\\_%'")
        ).scalars()
        for name in list(names):
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
    cache.clear()


@pytest.fixture
def clean(engine: sa.Engine) -> Iterator[sa.Engine]:
    drop_namespaces(engine)
    yield engine
    drop_namespaces(engine)


@pytest.fixture
def chain_a(chain_builder: ChainBuilder) -> ChainBuilder:
    """A chain in the default namespace (project_registry, project_*)."""
    return chain_builder.add("a1", ITEMS)


@pytest.fixture
def chain_b(tmp_path: Path) -> ChainBuilder:
    """Another application's chain, in its own namespace (app_registry, app_*)."""
    built = ChainBuilder(tmp_path / "b").add("b1", NOTES)
    set_options(built.ini, workspace_registry_schema="app_registry", workspace_schema_prefix="app_")
    return built


def snapshot(engine: sa.Engine, prefix: str, registry: str) -> dict[str, Any]:
    """A namespace as it is: its schemas with their versions and tables, its registry rows, its spares."""
    with engine.connect() as conn:
        schemas = conn.execute(
            sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :like ORDER BY 1"),
            {"like": prefix.replace("_", "\\_") + "%"},
        ).scalars()
        state: dict[str, Any] = {}
        for schema in list(schemas):
            version = conn.execute(sa.text(f"SELECT to_regclass('\"{schema}\".alembic_version')")).scalar()
            state[schema] = (
                conn.execute(sa.text(f'SELECT version_num FROM "{schema}".alembic_version')).all() if version else None,
                sorted(schema_tables(engine, schema)),
            )
        has_registry = conn.execute(sa.text(f"SELECT to_regclass('{registry}.workspace_config')")).scalar()
        rows = (
            [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {registry}.workspace_config ORDER BY 1"))]
            if has_registry
            else None
        )
        has_spares = conn.execute(sa.text(f"SELECT to_regclass('{registry}.spare_schemas')")).scalar()
        spare_rows = (
            [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {registry}.spare_schemas ORDER BY 1"))]
            if has_spares
            else None
        )
    return {"schemas": state, "rows": rows, "spares": spare_rows}


def schema_names(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT nspname FROM pg_namespace ORDER BY 1")).scalars())


def spare_schemas(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'workspace\\_spare\\_%' ORDER BY 1")
            ).scalars()
        )


# ------------------------------------------------------------------------------ the Namespace value
def test_a_namespace_maps_ids_to_its_own_schemas_and_back() -> None:
    assert APP.schema_for("acme-1") == "app_acme_1" and APP.project_id_for("app_acme_1") == "acme-1"
    assert DEFAULT.schema_for("acme-1") == "project_acme_1"
    assert APP.is_project_schema("app_x") and not APP.is_project_schema("project_x")
    assert not APP.is_project_schema("app_registry") and not DEFAULT.is_project_schema("project_registry")
    assert APP.sql("SELECT 1 FROM project_registry.workspace_config") == "SELECT 1 FROM app_registry.workspace_config"
    assert DEFAULT.sql("SELECT 1 FROM project_registry.workspace_config").endswith("project_registry.workspace_config")
    with pytest.raises(Exception, match="reserved"):
        APP.schema_for("registry")


@pytest.mark.parametrize(
    ("registry", "prefix", "words"),
    [
        ("App-Registry", "app_", "invalid registry schema 'App-Registry'"),
        ("app_registry", "app", "invalid schema prefix 'app'"),
        ("app_registry", "1app_", "invalid schema prefix '1app_'"),
        ("app_registry", "app__", "invalid schema prefix 'app__'"),
        ("app_things", "app_", "starts with the schema prefix 'app_'"),
        ("pg_registry", "app_", "names starting with pg_"),
        ("workspace_spare_registry", "app_", "names starting with workspace_spare_"),
    ],
)
def test_a_bad_namespace_in_alembic_ini_is_one_line_and_nothing_is_made(
    clean: sa.Engine, url_string: str, chain_builder: ChainBuilder, registry: str, prefix: str, words: str
) -> None:
    chain_builder.add("a1", ITEMS)
    set_options(chain_builder.ini, workspace_registry_schema=registry, workspace_schema_prefix=prefix)
    before = schema_names(clean)
    line = assert_one_line_error(cli(url_string, chain_builder.ini, "ensure", "acme"), words)
    assert "workspace_registry_schema / workspace_schema_prefix in" in line
    assert schema_names(clean) == before
    with pytest.raises(InvalidNamespace):
        Chain.load(chain_builder.ini)


# ------------------------------------------------------------------------------ two chains, one database
def test_what_one_chain_does_leaves_the_other_untouched(
    clean: sa.Engine, url_string: str, chain_a: ChainBuilder, chain_b: ChainBuilder
) -> None:
    a, b = Chain.load(chain_a.ini), Chain.load(chain_b.ini)
    assert b.namespace == APP and a.namespace == DEFAULT
    assert fleet.provision(clean, a, ["one", "two"]).ok
    assert fleet.provision(clean, b, ["one", "three"]).ok
    assert schema_tables(clean, "project_one") == {"alembic_version", "items"}
    assert schema_tables(clean, "app_one") == {"alembic_version", "notes"}

    # B: a new revision, upgrade --all, status, check, pool fill, pool drain: A as it was
    before_a = snapshot(clean, "project_", "project_registry")
    chain_b.add("b2", COLOR)
    Chain.forget(chain_b.ini)
    result = cli(url_string, chain_b.ini, "upgrade", "--all")
    assert result.exit_code == 0, result.output
    assert [schema_version(clean, s) for s in ("app_one", "app_three")] == ["b2", "b2"]
    status = cli(url_string, chain_b.ini, "status", "--json")
    assert status.exit_code == 0, status.output
    assert '"project_one"' not in status.stdout and '"project_two"' not in status.stdout
    assert cli(url_string, chain_b.ini, "status", "one", "--json").stdout.count("app_one") == 1
    check = cli(url_string, chain_b.ini, "check")
    assert check.exit_code == 0, check.output
    assert cli(url_string, chain_b.ini, "pool", "fill", "--size", "2").exit_code == 0
    assert [s.startswith("workspace_spare_app_") for s in spare_schemas(clean)] == [True, True]
    assert snapshot(clean, "project_", "project_registry") == before_a
    assert WorkspaceManager(clean, chain_b.ini, warm_pool=2).ensure_detailed("four").path == "pool"
    assert schema_tables(clean, "app_four") == {"alembic_version", "notes"}

    # A: the same commands (and a drain of its pool): B as it was, its spare included
    before_b = snapshot(clean, "app_", "app_registry")
    spares_b = spare_schemas(clean)
    chain_a.add("a2", 'op.add_column("items", sa.Column("name", sa.Text))')
    Chain.forget(chain_a.ini)
    result = cli(url_string, chain_a.ini, "upgrade", "--all")
    assert result.exit_code == 0, result.output
    assert [schema_version(clean, s) for s in ("project_one", "project_two")] == ["a2", "a2"]
    status = cli(url_string, chain_a.ini, "status", "--json")
    assert status.exit_code == 0 and "app_" not in status.stdout, status.output
    check = cli(url_string, chain_a.ini, "check")
    assert check.exit_code == 0, check.output
    report = drift.check(clean, Chain.load(chain_a.ini))
    assert sorted(s.schema for s in report.schemas) == ["project_one", "project_two"]
    assert spares.fill(clean, Chain.load(chain_a.ini), 1).built == 1
    assert spares.drain(clean) == 1  # the default namespace's spare only
    assert spare_schemas(clean) == spares_b
    listed = cli(url_string, chain_a.ini, "list", "--json")
    assert listed.exit_code == 0 and "app_" not in listed.stdout
    assert snapshot(clean, "app_", "app_registry") == before_b
    assert cli(url_string, chain_b.ini, "pool", "drain", "--yes").exit_code == 0
    assert spare_schemas(clean) == []


def test_the_readme_scenario_demo_first_then_your_applications_chain(
    clean: sa.Engine, url_string: str, tmp_path: Path
) -> None:
    """`workspace-tool ensure demo` in the checkout (the example chain), then an application's own chain
    in its own namespace, `ensure demo` again: its own app_demo; the example's project_demo as it was."""
    assert cli(url_string, ALEMBIC_INI, "ensure", "demo").exit_code == 0
    before = snapshot(clean, "project_", "project_registry")
    mine = ChainBuilder(tmp_path / "myapp").add("n1", NOTES)
    set_options(mine.ini, workspace_registry_schema="mine_registry", workspace_schema_prefix="mine_")

    result = cli(url_string, mine.ini, "ensure", "demo")

    assert result.exit_code == 0, result.output
    assert schema_tables(clean, "mine_demo") == {"alembic_version", "notes"}
    assert snapshot(clean, "project_", "project_registry") == before
    listed = cli(url_string, mine.ini, "list", "--json")
    assert '"mine_demo"' in listed.stdout and "project_demo" not in listed.stdout
    assert cli(url_string, mine.ini, "status").exit_code == 0
    assert cli(url_string, ALEMBIC_INI, "check").exit_code == 0  # the example's fleet: only its own


def test_a_command_pointed_at_the_other_chains_project_refuses_in_one_line(
    clean: sa.Engine, url_string: str, chain_a: ChainBuilder, tmp_path: Path
) -> None:
    """A chain with a registry of its own but the default prefix: `demo` is project_demo, which the other
    chain's registry holds. ensure and upgrade refuse, changing nothing; the fleet leaves it out."""
    a = Chain.load(chain_a.ini)
    assert fleet.provision(clean, a, ["demo"]).ok
    other = ChainBuilder(tmp_path / "other").add("o1", NOTES)
    set_options(other.ini, workspace_registry_schema="mine_registry")
    assert Chain.load(other.ini).namespace == Namespace("mine_registry", "project_")
    before = snapshot(clean, "project_", "project_registry")

    for args in (("ensure", "demo"), ("upgrade", "demo"), ("status", "demo")):
        line = assert_one_line_error(cli(url_string, other.ini, *args), "schema project_demo of project demo")
        assert "belongs to another chain: it is registered in project_registry" in line
    with pytest.raises(OtherNamespace):
        WorkspaceManager(clean, other.ini).ensure("demo")
    assert_one_line_error(cli(url_string, other.ini, "drop", "demo", "--yes"), "belongs to another chain")

    everything = cli(url_string, other.ini, "upgrade", "--all")
    assert everything.exit_code == 0, everything.output
    status = cli(url_string, other.ini, "status", "--json")
    assert status.exit_code == 0 and "project_demo" not in status.stdout
    assert snapshot(clean, "project_", "project_registry") == before


def test_a_revision_run_online_by_alembic_targets_the_namespaces_schema(clean: sa.Engine, tmp_path: Path) -> None:
    """The environment Alembic runs (alembic_env) takes a schema of the chain's own prefix."""
    online = ChainBuilder(tmp_path / "online").add("o1", NOTES, extra="workspace_online = True")
    set_options(online.ini, workspace_registry_schema="app_registry", workspace_schema_prefix="app_")
    result = WorkspaceManager(clean, online.ini).ensure_detailed("live")
    assert (result.schema, result.path) == ("app_live", "online")
    assert schema_tables(clean, "app_live") == {"alembic_version", "notes"}


def test_lint_tells_a_revision_naming_a_schema_of_the_chains_namespace(url_string: str, tmp_path: Path) -> None:
    naming = ChainBuilder(tmp_path / "lint").add("l1", 'op.execute("UPDATE app_acme.notes SET body = body")')
    set_options(naming.ini, workspace_registry_schema="app_registry", workspace_schema_prefix="app_")
    result = cli(url_string, naming.ini, "lint", "--no-squawk")
    assert result.exit_code == 1, result.output
    assert "names schema 'app_acme'" in result.output


def test_the_lifecycle_commands_work_within_the_chains_namespace(
    clean: sa.Engine, url_string: str, chain_a: ChainBuilder, chain_b: ChainBuilder
) -> None:
    """drop --retain, exec, restore, purge and bulk drop of chain B (app_registry, app_*) reach only B's
    projects, its registry (r0007 migrated there: status 'dropped') and quarantined copies of its own; A's
    project of the same id, quarantined at the same time, is as it was."""
    a, b = Chain.load(chain_a.ini), Chain.load(chain_b.ini)
    assert fleet.provision(clean, a, ["one", "two"]).ok
    assert fleet.provision(clean, b, ["one", "three"]).ok
    before_a = snapshot(clean, "project_", "project_registry")

    quarantined = cli(url_string, chain_b.ini, "drop", "one", "--retain", "1d", "--yes")
    assert quarantined.exit_code == 0, quarantined.output
    assert "app_one" not in schema_names(clean)
    with clean.connect() as conn:
        status = conn.execute(sa.text("SELECT status FROM app_registry.workspace_config WHERE project_id = 'one'"))
        assert status.scalar() == "dropped"
    executed = cli(url_string, chain_b.ini, "exec", "--all", "-c", "INSERT INTO notes (body) VALUES ('x')", "--json")
    assert executed.exit_code == 0, executed.output
    assert [(r["schema"], r["status"]) for r in json.loads(executed.stdout)["results"]] == [("app_three", "ok")]
    assert snapshot(clean, "project_", "project_registry") == before_a

    # A quarantines its own `one` meanwhile: two copies aside, one per chain
    assert cli(url_string, chain_a.ini, "drop", "one", "--retain", "1d", "--yes").exit_code == 0
    aside = [s for s in schema_names(clean) if s.startswith("dropped_")]
    assert len(aside) == 2 and "dropped_one" in aside
    before_a = snapshot(clean, "project_", "project_registry")
    restored = cli(url_string, chain_b.ini, "restore", "one")
    assert restored.exit_code == 0, restored.output
    assert schema_tables(clean, "app_one") == {"alembic_version", "notes"}
    listed = cli(url_string, chain_a.ini, "purge", "--list", "--json")
    assert '"one"' in listed.stdout and "dropped_one" in listed.stdout

    dropped = cli(url_string, chain_b.ini, "drop", "--match", "*", "--yes")
    assert dropped.exit_code == 0, dropped.output
    assert not [s for s in schema_names(clean) if s.startswith("app_") and s != "app_registry"]
    assert snapshot(clean, "project_", "project_registry") == before_a
    assert cli(url_string, chain_a.ini, "restore", "one").exit_code == 0
    assert schema_tables(clean, "project_one") == {"alembic_version", "items"}
