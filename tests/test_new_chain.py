"""An application's own chain (issue 13, section 2), as a new user builds it: its own one-table models,
``workspace-tool init-chain``, ``revision --autogenerate``, ``ensure``, a model change, ``upgrade --all``,
``check``, all through the CLI in a folder of its own."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from support.cli import assert_one_line_error
from support.db import schema_version

import workspace_tool
from workspace_tool.alembic_env import TEMPLATE_DIR
from workspace_tool.cli import main
from workspace_tool.errors import ConfigurationError

MODELS = '''
"""myapp's tables, one per project schema."""
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(sa.Text)
'''

TITLE = """
    title: Mapped[str | None] = mapped_column(sa.String(200))
"""


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A new application's folder, the current directory; what it imports is forgotten afterwards."""
    app = tmp_path / "myapp-project"
    (app / "myapp").mkdir(parents=True)
    (app / "myapp" / "__init__.py").write_text("")
    (app / "myapp" / "models.py").write_text(textwrap.dedent(MODELS))
    monkeypatch.chdir(app)
    monkeypatch.delenv("WORKSPACE_TOOL_CONFIG", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))  # sys.path (which alembic.ini's prepend_sys_path extends) is restored
    # the example chain's migrations.models too: the application's own migrations/models.py is imported instead
    for name in ("myapp", "myapp.models", "migrations", "migrations.models"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return app


def cli(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--database-url", url, *args], prog_name="workspace-tool")


def change_models(app: Path, addition: str) -> None:
    """Edit myapp/models.py as a developer would; the next command imports the new version."""
    models = app / "myapp" / "models.py"
    models.write_text(models.read_text() + textwrap.dedent(addition).replace("\n", "\n    ", 1))
    sys.modules.pop("myapp.models", None)


def columns(engine: sa.Engine, schema: str, table: str) -> list[str]:
    with engine.connect() as conn:
        query = "SELECT column_name FROM information_schema.columns WHERE table_schema = :s AND table_name = :t"
        return list(conn.execute(sa.text(query + " ORDER BY ordinal_position"), {"s": schema, "t": table}).scalars())


def test_a_new_application_from_init_chain_to_its_project_schemas(
    engine: sa.Engine, url_string: str, app_dir: Path
) -> None:
    init = cli(url_string, "init-chain", "migrations", "--models", "myapp.models:Base")
    assert init.exit_code == 0, init.output
    assert sorted(p.name for p in (app_dir / "migrations").iterdir()) == ["env.py", "script.py.mako", "versions"]
    ini = (app_dir / "alembic.ini").read_text()
    assert "workspace_models = myapp.models:Base" in ini and "script_location = %(here)s/migrations" in ini
    assert "from workspace_tool import alembic_env" in (app_dir / "migrations" / "env.py").read_text()

    first = cli(url_string, "revision", "-m", "create notes", "--autogenerate", "--json")
    assert first.exit_code == 0, first.output
    (created,) = json.loads(first.stdout)
    assert created["down_revision"] is None and created["operations"] == 1
    source = Path(created["path"]).read_text()
    assert "op.create_table('notes'" in source and "op.drop_table('notes')" in source
    assert "schema" not in source.split('"""', 2)[2] and "project_" not in source

    ensured = cli(url_string, "ensure", "alpha", "beta", "--json")
    assert ensured.exit_code == 0, ensured.output
    actions = [(r["action"], r["to_revision"]) for r in json.loads(ensured.stdout)]
    assert actions == [("create", created["revision"])] * 2
    assert columns(engine, "project_alpha", "notes") == ["id", "body"]

    change_models(app_dir, TITLE)
    second = cli(url_string, "revision", "-m", "note titles", "--autogenerate", "--json")
    assert second.exit_code == 0, second.output
    (titled,) = json.loads(second.stdout)
    assert titled["down_revision"] == created["revision"]
    assert "op.add_column('notes', sa.Column('title', sa.String(length=200)" in Path(titled["path"]).read_text()

    upgraded = cli(url_string, "upgrade", "--all", "--json")
    assert upgraded.exit_code == 0, upgraded.output
    for schema in ("project_alpha", "project_beta"):
        assert schema_version(engine, schema) == titled["revision"]
        assert columns(engine, schema, "notes") == ["id", "body", "title"]

    checked = cli(url_string, "check")
    assert checked.exit_code == 0, checked.output
    assert "2 schema(s) checked" in checked.stderr and "all match" in checked.stderr

    nothing = cli(url_string, "revision", "-m", "nothing", "--autogenerate")
    assert nothing.exit_code == 0, nothing.output
    assert "No changes detected" in nothing.stderr
    assert len(list((app_dir / "migrations" / "versions").glob("*.py"))) == 2


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("ini", ["init-chain", "migrations", "--models", "myapp.models:Base"], "alembic.ini already exists"),
        ("dir", ["init-chain", "migrations", "--models", "myapp.models:Base"], "migrations already exists and is not"),
        ("", ["init-chain", "migrations", "--models", "myapp.models"], "write it as package.module:attribute"),
        ("", ["init-chain", "migrations", "--models", "a:b\nx = y"], "write it as package.module:attribute"),
        ("", ["init-chain", "../elsewhere/chain"], "can't be imported as a package from"),
        ("", ["init-chain", "db-chain"], "name your own models with --models package.module:metadata"),
    ],
)
def test_init_chain_refuses_and_writes_nothing(app_dir: Path, setup: str, args: list[str], message: str) -> None:
    if setup == "ini":
        (app_dir / "alembic.ini").write_text("[alembic]\n")
    if setup == "dir":
        (app_dir / "migrations").mkdir()
        (app_dir / "migrations" / "notes.txt").write_text("mine")
    before = sorted(str(p) for p in app_dir.rglob("*"))
    result = CliRunner().invoke(main, args, prog_name="workspace-tool")
    assert result.exit_code in (1, 2) and message in result.stderr
    assert "Traceback" not in result.output
    assert sorted(str(p) for p in app_dir.rglob("*")) == before


def test_init_chain_writes_alembic_ini_where_c_says(app_dir: Path) -> None:
    result = CliRunner().invoke(
        main, ["-c", "config/alembic.ini", "init-chain", "db/chain", "--models", "myapp.models:Base"]
    )
    assert result.exit_code == 0, result.output
    assert "script_location = %(here)s/../db/chain" in (app_dir / "config" / "alembic.ini").read_text()
    assert (app_dir / "db" / "chain" / "env.py").read_bytes() == (TEMPLATE_DIR / "env.py").read_bytes()


NOTE = """
class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(sa.Text)
"""


def test_init_chain_writes_the_applications_models_beside_env_py_and_autogenerate_reads_them(
    engine: sa.Engine, url_string: str, app_dir: Path
) -> None:
    init = cli(url_string, "init-chain", "migrations")
    assert init.exit_code == 0, init.output
    chain = app_dir / "migrations"
    assert sorted(p.name for p in chain.iterdir()) == ["env.py", "models.py", "script.py.mako", "versions"]
    assert "workspace_models = migrations.models:metadata" in (app_dir / "alembic.ini").read_text()
    assert "write your tables in migrations/models.py" in init.stderr

    empty = cli(url_string, "revision", "-m", "nothing yet", "--autogenerate")
    assert empty.exit_code == 0, empty.output
    assert "No changes detected" in empty.stderr  # the template's models hold no table

    models = chain / "models.py"
    models.write_text(models.read_text() + textwrap.dedent(NOTE))  # the developer's first table
    sys.modules.pop("migrations.models", None)  # the next command (a new process for the developer) reads it
    written = cli(url_string, "revision", "-m", "create notes", "--autogenerate", "--json")
    assert written.exit_code == 0, written.output
    (created,) = json.loads(written.stdout)
    assert created["operations"] == 1 and "op.create_table('notes'" in Path(created["path"]).read_text()
    assert cli(url_string, "ensure", "alpha").exit_code == 0
    assert columns(engine, "project_alpha", "notes") == ["id", "body"]


def test_the_library_ships_no_models_of_its_own() -> None:
    assert importlib.util.find_spec("workspace_tool.models") is None
    assert not list(Path(workspace_tool.__file__).parent.glob("models.py"))


def test_a_chain_without_models_says_so_in_one_line_where_they_are_needed(
    engine: sa.Engine, url_string: str, app_dir: Path
) -> None:
    assert cli(url_string, "init-chain", "migrations").exit_code == 0
    ini = app_dir / "alembic.ini"
    ini.write_text(re.sub(r"(?m)^workspace_models = .*\n", "", ini.read_text()))
    result = cli(url_string, "revision", "-m", "create notes", "--autogenerate")
    assert result.exit_code == 1
    assert_one_line_error(result, "name the models in alembic.ini (workspace_models = package.module:metadata)")
    assert list((app_dir / "migrations" / "versions").iterdir()) == []

    from workspace_tool.authoring import compare_schema

    with engine.connect() as conn, pytest.raises(ConfigurationError) as raised:
        compare_schema(conn, "project_alpha", "workspace_extensions", config=ini)
    assert str(raised.value) == (
        "alembic.ini names no models: set workspace_models = package.module:metadata in its [alembic] section "
        "(workspace-tool init-chain writes a models.py beside env.py for it), or pass them"
    )


def test_a_new_chains_first_revision_by_hand_needs_no_database(app_dir: Path) -> None:
    assert cli("postgresql://nobody:secret@127.0.0.1:1/none", "init-chain", "db", "--models", "x.y:Base").exit_code == 0
    written = cli("postgresql://nobody:secret@127.0.0.1:1/none", "revision", "-m", "by hand", "--json")
    assert written.exit_code == 0, written.output
    (result,) = json.loads(written.stdout)
    assert result["down_revision"] is None and Path(result["path"]).parent == app_dir / "db" / "versions"
