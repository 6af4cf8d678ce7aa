"""Running the CLI (in this process or as the script), Alembic's command line and psql, and what a user
error must look like."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result
from sqlalchemy.engine import URL

from support.chains import ALEMBIC_INI
from workspace_tool.cli import main

CLI = [sys.executable, "-c", "from workspace_tool.cli import main; main()"]  # as the workspace-tool script
ALEMBIC = str(Path(sys.executable).with_name("alembic"))


def run_cli(*args: str) -> Result:
    """``workspace-tool ARGS`` in this process (an exception the CLI doesn't handle fails the test)."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """A user error as the CLI must show it: exit 1, nothing on stdout, one `Error: ` line holding the
    fragments, no traceback. Returns the line."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def lint(ini: Path, *extra: str) -> Result:
    """``workspace-tool -c INI lint EXTRA``."""
    return CliRunner().invoke(main, ["-c", str(ini), "lint", *extra], catch_exceptions=False)


def psql(url: URL, script: str) -> subprocess.CompletedProcess[str]:
    """psql (the embedded server's) running ``script`` on the database at ``url``, stopping at the first error."""
    from workspace_tool import embedded

    uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return subprocess.run(
        [str(embedded.client_bin_dir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", uri, "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_alembic(
    url: URL, *args: str, ini: Path = ALEMBIC_INI, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The alembic command on ``ini`` with WORKSPACE_TOOL_DATABASE_URL set to ``url`` (and ``env`` besides)."""
    env = {**os.environ, "WORKSPACE_TOOL_DATABASE_URL": url.render_as_string(hide_password=False), **(env or {})}
    return subprocess.run(
        [ALEMBIC, "-c", str(ini), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
