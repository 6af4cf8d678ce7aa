"""Every example in the docs (docs/**/*.md) and README.md runs, as docs/contributing.md describes.

One test per page, with Sybil: the page's ```python, ```output, ```console and ```bash blocks run in order on
a fresh, empty database of the page's own, in a temporary folder holding a copy of this repository's chain,
with DATABASE_URL and WORKSPACE_TOOL_DATABASE_URL naming that database. An example that can't run here is
preceded by ``<!-- skip: next "reason" -->`` (Sybil's skip directive; the reason is required).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import doctest
import inspect
import io
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import metadata
from pathlib import Path
from unittest import SkipTest

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from support.chains import ROOT
from sybil import Document, Example, Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser

from workspace_tool.cli import main

PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
OUTPUT_KEY = "__docs_stdout__"  # what the last python block printed, for the ```output block after it
CHECKER = doctest.OutputChecker()
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PIP_INSTALL = re.compile(r"^(?:python3? -m )?pip install\b")
COMMAND_TIMEOUT_S = 120
SHELL_SYNTAX = re.compile(r"[|&;<>$`()*?\\\n]")


def extras() -> set[str]:
    """The extras of the installed workspace-tool (pyproject.toml's optional-dependencies)."""
    return set(metadata("workspace-tool").get_all("Provides-Extra") or [])


def check_pip_install(command: str) -> None:
    """A `pip install` in the docs is not run: every extra it names must be one of pyproject.toml's."""
    named = {e.strip() for spec in re.findall(r"\[([a-z0-9_,\- ]+)\]", command) for e in spec.split(",")}
    unknown = named - extras()
    assert not unknown, f"{command!r} names extras pyproject.toml doesn't have: {sorted(unknown)}"


def matches(expected: str, got: str) -> bool:
    return CHECKER.check_output(expected.strip() + "\n", got.strip() + "\n", FLAGS)


def run_python(example: Example) -> None:
    source = "\n" * (example.line + example.parsed.line_offset) + example.parsed
    code = compile(source, example.path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = eval(code, example.namespace)  # exec, or a coroutine when the block awaits at top level
        if inspect.iscoroutine(result):
            asyncio.run(result)
    example.namespace.pop("__builtins__", None)
    example.namespace[OUTPUT_KEY] = out.getvalue()


def check_output(example: Example) -> str | None:
    printed = example.namespace.pop(OUTPUT_KEY, None)
    if printed is None:
        return "an ```output block must follow a ```python block"
    if not matches(str(example.parsed), printed):
        return f"the python block above printed:\n{printed}\nexpected:\n{example.parsed}"
    return None


def commands(text: str) -> list[tuple[str, str]]:
    """A console transcript's (command, expected output) pairs: `$ ` lines, `\\` continuing them."""
    pairs: list[tuple[str, list[str]]] = []
    continued = False
    for line in text.splitlines():
        if continued:  # after a `\`, with the shell's `> ` prompt or without
            pairs[-1] = (pairs[-1][0] + "\n" + line.removeprefix("> "), pairs[-1][1])
        elif line.startswith("$ "):
            pairs.append((line[2:], []))
        elif pairs:
            pairs[-1][1].append(line)
        else:
            raise AssertionError(f"a console block starts with a command (`$ ...`), not {line!r}")
        continued = line.endswith("\\")
    return [(command, "\n".join(expected)) for command, expected in pairs]


def workspace_tool(command: str) -> tuple[int, str] | None:
    """A plain `workspace-tool ARGS` (no shell syntax) runs in this process, through click (as the suite's
    CLI tests do; a process per command would cost a second or two of imports each); None otherwise."""
    if SHELL_SYNTAX.search(command):
        return None
    words = shlex.split(command, comments=True)  # a `# ...` after the command is the docs' comment
    if not words or words[0] != "workspace-tool":
        return None
    result = CliRunner().invoke(main, words[1:], prog_name="workspace-tool")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout + result.stderr


def shell(script: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", *options, "-c", script],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )


def run_console(example: Example) -> str | None:
    pairs = commands(str(example.parsed))
    status = 0
    for index, (command, expected) in enumerate(pairs):
        if PIP_INSTALL.match(command):
            check_pip_install(command)
            continue
        if command == "echo $?":  # the exit status of the command before, as the transcript shows it
            if not matches(expected, str(status)):
                return f"$ {pairs[index - 1][0]}\nexited {status}, the docs say {expected}"
            continue
        ran = workspace_tool(command)
        if ran is None:
            done = shell(command)
            ran = done.returncode, done.stdout + done.stderr
        status, printed = ran
        shows_status = index + 1 < len(pairs) and pairs[index + 1][0] == "echo $?"
        failing = expected.lstrip().startswith("Error:")
        if failing and status == 0:
            return f"$ {command}\nexited 0, but the docs show it failing; it printed:\n{printed}"
        if not failing and not shows_status and status != 0:
            return f"$ {command}\nexited {status}:\n{printed}"
        if expected.strip() and not matches(expected, printed):
            return f"$ {command}\nprinted:\n{printed}\nexpected:\n{expected}"
    return None


def run_bash(example: Example) -> str | None:
    lines = []
    for line in str(example.parsed).splitlines():
        if PIP_INSTALL.match(line.strip()):
            check_pip_install(line)
        else:
            lines.append(line)
    done = shell("\n".join(lines), "-e")
    if done.returncode != 0:
        return f"the script exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return None


SYBIL = Sybil(
    parsers=[
        SkipParser(),
        CodeBlockParser("python", run_python),
        CodeBlockParser("output", check_output),
        CodeBlockParser("console", run_console),
        CodeBlockParser("bash", run_bash),
    ],
    path=str(ROOT),
)


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_every_skip_says_why() -> None:
    """A skipped example names its reason: `<!-- skip: next "needs a Citus cluster" -->`."""
    skips = [
        (page_id(page), line)
        for page in PAGES
        for line in page.read_text().splitlines()
        if re.match(r"\s*<!--+\s*skip", line)
    ]
    assert skips, "the skip marker is documented in docs/contributing.md: keep the check's pattern in step"
    for page, line in skips:
        assert re.fullmatch(r'\s*<!-- skip: next "[^"]{10,}" -->', line), f"{page}: {line.strip()}"
    assert len(skips) <= 12, f"{len(skips)} examples skipped: few are allowed ({skips})"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_examples_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    document: Document = SYBIL.parse(page)
    examples = list(document)
    if not examples:
        return
    new_database: URL = request.getfixturevalue("new_database")
    shutil.copy(ROOT / "alembic.ini", tmp_path / "alembic.ini")
    shutil.copytree(ROOT / "migrations", tmp_path / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    url = new_database.render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("WORKSPACE_TOOL_DATABASE_URL", url)
    monkeypatch.delenv("WORKSPACE_TOOL_CONFIG", raising=False)
    monkeypatch.delenv("WORKSPACE_TOOL_DIRECT_URL", raising=False)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    root, library = logging.getLogger(), logging.getLogger("workspace_tool")
    handlers, levels = list(root.handlers), (root.level, library.level)
    try:
        for example in examples:
            with contextlib.suppress(SkipTest):  # an example marked `<!-- skip: next "reason" -->`
                example.evaluate()
    finally:  # an example that configures logging does so for the page, not for the tests after it
        root.handlers[:] = handlers
        root.setLevel(levels[0])
        library.setLevel(levels[1])
    for value in list(document.namespace.values()):  # engines the examples made: close their connections
        if isinstance(value, sa.Engine):
            value.dispose()
        elif isinstance(value, AsyncEngine):
            asyncio.run(value.dispose())


def test_the_tests_the_guarantees_name_exist() -> None:
    """docs/operations/guarantees.md names the test proving each guarantee: a renamed test breaks this."""
    named = re.findall(r"`tests/(test_\w+\.py)::(test_\w+)`", (ROOT / "docs/operations/guarantees.md").read_text())
    assert len(named) > 20
    for module, test in named:
        source = (ROOT / "tests" / module).read_text()
        assert re.search(rf"^(async )?def {test}\(", source, re.MULTILINE), f"tests/{module} has no {test}"


def test_console_transcripts_are_read_as_written() -> None:
    """The runner's own reading of a transcript: commands, continuations and the output after each."""
    text = "$ workspace-tool a \\\n>   --b\nout 1\nout 2\n$ workspace-tool c\n"
    assert commands(text) == [("workspace-tool a \\\n  --b", "out 1\nout 2"), ("workspace-tool c", "")]
    assert matches("demo ...create...", "demo   project_demo  created  0004  1.2  fast")
    assert not matches("demo ...upgrade...", "demo   project_demo  created  0004  1.2  fast")
    with pytest.raises(AssertionError, match="nosuch"):
        check_pip_install('python3 -m pip install ".[embedded,nosuch]"')
    check_pip_install(shlex.join(["pip", "install", "workspace-tool[async]"]))
