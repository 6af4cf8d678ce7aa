"""squawk over each revision's compiled SQL: locks, table rewrites, scans, breaking changes.

squawk (PyPI ``squawk-cli``, the ``workspace-tool[squawk]`` extra) is a linter for PostgreSQL migrations.
Each revision is rendered alone, offline and with no schema name, exactly as the fast path replays it
(``Chain.compile(down_revision, revision)``; no database), minus Alembic's version-table bookkeeping.
All revisions go to one squawk run, each wrapped in the transaction the tool runs it in (one per schema),
and squawk's JSON report is mapped back to the revision and the statement. A revision that can't run in a
transaction (``workspace_transactional = False``, ``autocommit_block()``) runs each statement on its own:
those go to a second squawk run, unwrapped and not assumed in a transaction.

Revisions that only run online (``workspace_online = True``, ``op.get_bind()``, ...) or fail to render
offline have no SQL to check: they are listed as not checked. Upgrades only: downgrades undo what an
upgrade made, so squawk's rules about dropping things would fire on every one of them.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workspace_tool.chain.revisions import Chain
from workspace_tool.dberrors import first_line
from workspace_tool.errors import ConfigurationError

REQUIREMENT = "squawk-cli>=2.70,<3"
MIN_VERSION = (2, 70)
INSTALL_HINT = "pip install 'workspace-tool[squawk]'"
EXCLUDE_OPTION = "workspace_squawk_exclude"
INCLUDE_OPTION = "workspace_squawk_include"
IGNORE_ATTRIBUTE = "workspace_squawk_ignore"

# squawk's rules that are off unless alembic.ini's workspace_squawk_include turns them back on. The rest
# of squawk's default set stays on: what takes a lock that blocks a live project's reads or writes,
# rewrites or scans its tables, or breaks the application while the fleet is half upgraded.
DEFAULT_EXCLUDED: dict[str, str] = {
    "prefer-robust-stmts": "a revision runs once per schema, inside that schema's transaction, under its "
    "lock, recorded in its version table; IF NOT EXISTS would only hide drift that `check` reports",
    "require-lock-timeout": "the runner sets lock_timeout on every schema's transaction "
    "(`upgrade --all --lock-timeout`, 5s by default) and retries; a revision need not",
    "require-statement-timeout": "a timeout is the runner's or the role's setting, not each revision's",
    "prefer-bigint-over-int": "column-type taste, not migration safety; a type change later is reported "
    "by changing-column-type",
    "prefer-bigint-over-smallint": "column-type taste, as prefer-bigint-over-int",
    "prefer-identity": "column-type taste (serial or identity): no lock or rewrite either way",
    "prefer-text-field": "column-type taste; a later varchar resize is reported by changing-column-type",
    "prefer-timestamp-tz": "column-type taste: no lock or rewrite either way",
    "ban-char-field": "column-type taste: no lock or rewrite either way",
}

_RULE_SEPARATOR = re.compile(r"[\s,]+")
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_SYNTAX_ERROR = "syntax-error"
_VERSION_TABLE = re.compile(r"\balembic_version\b")


@dataclass(frozen=True)
class Violation:
    """One squawk finding on one statement of a revision's upgrade."""

    revision_path: Path
    rule: str
    message: str
    sql: str  # the whole statement
    excerpt: str  # on one line: the statement, or its first line and the line squawk points at


@dataclass(frozen=True)
class Unchecked:
    revision_path: Path
    reason: str


@dataclass(frozen=True)
class SquawkRun:
    version: str
    excluded: tuple[str, ...]
    included: tuple[str, ...]
    violations: tuple[Violation, ...]
    acknowledged: tuple[Violation, ...]  # listed in their revision's workspace_squawk_ignore
    unchecked: tuple[Unchecked, ...]


@dataclass(frozen=True)
class _Statement:
    first_line: int  # 0-based, in the file handed to squawk
    last_line: int
    sql: str


@dataclass(frozen=True)
class _Revision:
    path: Path
    statements: tuple[_Statement, ...]
    ignored: frozenset[str]


# --------------------------------------------------------------------------- the binary
def find_binary() -> str | None:
    """The squawk executable: the one the ``squawk-cli`` wheel put beside this Python, else on PATH."""
    name = "squawk.exe" if os.name == "nt" else "squawk"
    for scheme in (None, f"{os.name}_user"):
        try:
            scripts = sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
        except KeyError:  # pragma: no cover - no user scheme on this platform
            continue
        candidate = Path(scripts) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("squawk")


def binary_version(binary: str) -> str:
    """squawk's version ('2.70.0'), checked against the supported range."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigurationError(f"cannot run squawk ({binary}): {exc}; reinstall it: {INSTALL_HINT}") from None
    match = _VERSION.search(out)
    if match is None:
        raise ConfigurationError(f"cannot read squawk's version from {out.strip()!r} ({binary}); {INSTALL_HINT}")
    major, minor = int(match.group(1)), int(match.group(2))
    if major != MIN_VERSION[0] or minor < MIN_VERSION[1]:
        raise ConfigurationError(
            f"squawk {match.group(0)} ({binary}) is not supported: workspace-tool lint needs {REQUIREMENT}; "
            f"{INSTALL_HINT}"
        )
    return match.group(0)


# --------------------------------------------------------------------------- settings
def parse_rules(value: str | None) -> tuple[str, ...]:
    """'rule-a, rule-b' (commas and/or whitespace, one per line too) -> ('rule-a', 'rule-b')."""
    return tuple(dict.fromkeys(r for r in _RULE_SEPARATOR.split(value or "") if r))


def rule_settings(chain: Chain) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(rules excluded, rules included) for squawk: the defaults, then alembic.ini's [alembic] options.

    ``workspace_squawk_exclude`` turns more rules off; ``workspace_squawk_include`` turns on a rule the
    defaults exclude, or one of squawk's opt-in rules. Excluding wins, as in squawk."""
    exclude = parse_rules(chain.config.get_main_option(EXCLUDE_OPTION))
    include = parse_rules(chain.config.get_main_option(INCLUDE_OPTION))
    excluded = tuple(dict.fromkeys([*(r for r in DEFAULT_EXCLUDED if r not in include), *exclude]))
    return excluded, include


def ignored_rules(source: str, path: str) -> frozenset[str]:
    """The rules a revision acknowledges with a module-level ``workspace_squawk_ignore = [...]``."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError:
        return frozenset()  # the schema check reports it
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == IGNORE_ATTRIBUTE
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                value = None
            if not isinstance(value, (list, tuple, set, frozenset)) or not all(isinstance(v, str) for v in value):
                raise ConfigurationError(
                    f"{path}:{node.lineno}: {IGNORE_ATTRIBUTE} must be a literal list of squawk rule names, "
                    f'e.g. {IGNORE_ATTRIBUTE} = ["changing-column-type"]'
                )
            return frozenset(value)
    return frozenset()


# --------------------------------------------------------------------------- the SQL
def statements(compiled: Sequence[str]) -> list[str]:
    """A revision's compiled statements (Chain.compile_statements) without their ';' and without the
    version-table bookkeeping."""
    return [s.removesuffix(";") for s in compiled if not _VERSION_TABLE.search(s)]


def _render(chain: Chain, rev: str) -> tuple[Path, list[str] | str]:
    """(revision file, its upgrade's statements, or why it has none to check)."""
    script = chain.script.get_revision(rev)
    assert script is not None
    path = Path(script.path)
    down = script.down_revision
    if isinstance(down, (tuple, list)):
        return path, "a merge point; squawk checks each branch's revisions"
    if not chain.renders_offline(rev):
        return path, "runs online (workspace_online, get_bind(), ...): its SQL is only known at run time"
    try:
        return path, statements(chain.compile_statements(down, rev))
    except Exception as exc:  # whatever the revision raised while rendering offline
        return path, f"cannot be rendered offline ({first_line(exc)}), so it runs online"


def _write(directory: Path, index: int, path: Path, sql: list[str], *, transactional: bool) -> tuple[str, _Revision]:
    """One file per revision: its statements inside BEGIN/COMMIT, as each schema's transaction runs them
    (alone, for a revision that can't run in a transaction)."""
    lines = ["BEGIN;"] if transactional else []
    placed: list[_Statement] = []
    for statement in sql:
        text = statement + ";"
        placed.append(_Statement(len(lines), len(lines) + text.count("\n"), statement))
        lines += text.split("\n")
    if transactional:
        lines.append("COMMIT;")
    name = f"{index:05d}_{path.stem}.sql"
    (directory / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = path.read_text(encoding="utf-8")
    return name, _Revision(path, tuple(placed), ignored_rules(source, str(path)))


def _statement_at(revision: _Revision, line: int) -> _Statement | None:
    """The statement on a 0-based line; None for the BEGIN/COMMIT the file is wrapped in."""
    for statement in revision.statements:
        if statement.first_line <= line <= statement.last_line:
            return statement
    return None


def _run(
    binary: str,
    directory: Path,
    files: Iterable[str],
    excluded: tuple[str, ...],
    include: tuple[str, ...],
    *,
    transactional: bool = True,
) -> Any:
    config = directory / "squawk.toml"  # an empty config: squawk reads no .squawk.toml of the user's
    config.write_text("", encoding="utf-8")
    # --assume-in-transaction: the revision's own COMMIT/BEGIN is reported (transaction-nesting); the
    # explicit BEGIN around each file makes squawk see CREATE INDEX CONCURRENTLY inside a transaction.
    # Neither for the revisions that can't run in a transaction.
    args = [
        binary,
        "--reporter",
        "json",
        *(["--assume-in-transaction"] if transactional else []),
        "--config",
        str(config),
    ]
    if excluded:
        args.append("--exclude=" + ",".join(excluded))
    if include:
        args.append("--include=" + ",".join(include))
    done = subprocess.run([*args, *files], cwd=directory, capture_output=True, text=True, timeout=600)
    if done.returncode not in (0, 1):
        first = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
        raise ConfigurationError(
            f"squawk refused to run: {first.removeprefix('error: ')}; check {EXCLUDE_OPTION} and "
            f"{INCLUDE_OPTION} in alembic.ini (rule names as squawk spells them)"
        )
    try:
        return json.loads(done.stdout or "[]")
    except json.JSONDecodeError:
        raise ConfigurationError(f"squawk's report is not JSON ({done.stdout[:80]!r}); {INSTALL_HINT}") from None


def run(chain: Chain, binary: str) -> SquawkRun:
    """squawk over every revision's upgrade SQL; one squawk process for the whole chain."""
    version = binary_version(binary)
    excluded, included = rule_settings(chain)
    unchecked: dict[int, Unchecked] = {}
    found: list[tuple[int, int, Violation]] = []  # (revision index, line, violation): squawk's order is its own
    with tempfile.TemporaryDirectory(prefix="workspace-tool-squawk-") as tmp:
        directory = Path(tmp)
        revisions: dict[str, tuple[int, _Revision]] = {}
        outside: set[str] = set()  # files of revisions that can't run in a transaction
        for index, rev in enumerate(chain.revisions):
            path, sql = _render(chain, rev)
            if isinstance(sql, str):
                unchecked[index] = Unchecked(path, sql)
            else:
                transactional = not chain.runs_outside_transaction(rev)
                name, revision = _write(directory, index, path, sql, transactional=transactional)
                revisions[name] = (index, revision)
                if not transactional:
                    outside.add(name)
        report = []
        for transactional, files in ((True, [f for f in revisions if f not in outside]), (False, sorted(outside))):
            if files:
                report += _run(binary, directory, files, excluded, included, transactional=transactional)
    for item in report:
        index, revision = revisions[Path(item["file"]).name]
        line = int(item["line"])
        statement = _statement_at(revision, line)
        if statement is None:
            continue  # on the BEGIN/COMMIT we wrapped it in
        if item["rule_name"] == _SYNTAX_ERROR:
            reason = f"squawk cannot parse {short_sql(statement.sql)!r}: {item['message']}"
            unchecked.setdefault(index, Unchecked(revision.path, reason))
            continue
        violation = Violation(
            revision.path, item["rule_name"], item["message"], statement.sql, excerpt(statement, line)
        )
        found.append((index, line, violation))
    found.sort(key=lambda f: f[:2])
    ignored = {index: revision.ignored for index, revision in revisions.values()}
    return SquawkRun(
        version,
        excluded,
        included,
        tuple(v for i, _, v in found if v.rule not in ignored[i]),
        tuple(v for i, _, v in found if v.rule in ignored[i]),
        tuple(unchecked[i] for i in sorted(unchecked)),
    )


def short_sql(sql: str, width: int = 100) -> str:
    """SQL on one line, cut to width."""
    flat = " ".join(sql.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def excerpt(statement: _Statement, line: int) -> str:
    """A statement on one line; a long one as its first line and the line squawk points at
    ('CREATE TABLE t ( … name VARCHAR(50),')."""
    whole = short_sql(statement.sql)
    lines = statement.sql.split("\n")
    if not whole.endswith("…") or line == statement.first_line:
        return whole
    return f"{short_sql(lines[0], 60)} … {short_sql(lines[line - statement.first_line], 60)}"
