"""Static check of the chain: nothing in a revision may name a schema.

Every revision runs into one project schema through three guards (translate map, version table schema,
search_path). A revision that names a schema itself escapes them: ``schema="public"`` on an ALTER-type op
is rendered as written (Alembic applies ``schema_translate_map`` only to what SQLAlchemy compiles, not to
its own ALTER constructs, alembic issue #555), and ``op.execute("... project_other.t ...")`` is plain
text. This module reads each revision's AST (nothing is imported or run) and reports such references as
``path:line: message``. ``lint_chain`` adds squawk's findings on each revision's compiled SQL
(``workspace_tool.squawk``; rendering a revision offline runs its ``upgrade()`` but needs no database) as
``path: squawk rule: message [statement]``.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.util import CommandError

from workspace_tool.chain import Chain, display_path, load_script_directory, resolve_config_path, squawk
from workspace_tool.chain.loading import main_option
from workspace_tool.errors import ConfigurationError
from workspace_tool.namespace import DEFAULT, REGISTRY_SCHEMA_OPTION, SCHEMA_PREFIX_OPTION, Namespace, from_options

# Keyword arguments that name a schema, on any call (op.*, sa.Table, sa.ForeignKey, sa.Sequence, ...).
SCHEMA_KWARGS = frozenset({"schema", "referent_schema", "source_schema", "version_table_schema"})

# Alembic ops whose DDL Alembic renders itself: an explicit schema= is used verbatim and the translate
# map never sees it (alembic #555). create_table/create_index/drop_table/drop_index go through
# SQLAlchemy's compiler and are translated, but a name there still points outside the project schema.
IGNORES_TRANSLATE_MAP = frozenset(
    {
        "add_column",
        "alter_column",
        "drop_column",
        "rename_table",
        "create_foreign_key",
        "create_unique_constraint",
        "create_check_constraint",
        "create_primary_key",
        "drop_constraint",
        "create_table_comment",
        "drop_table_comment",
        "create_exclude_constraint",
        "batch_alter_table",
        "bulk_insert",
        "execute",
    }
)

# Calls whose string arguments are SQL.
SQL_CALLS = frozenset({"execute", "text", "exec_driver_sql", "DDL"})

# Schema names that must never appear qualifying an object in a revision's SQL: the project schemas and the
# registry of the chain's namespace (and the default one's), public and the extension's schema.
_SCHEMA_REFERENCE = r"""(?<![\w."])("?)(?P<schema>{names}|public|workspace_extensions)\1\s*\.\s*"?[A-Za-z_]"""


@functools.cache
def _schema_reference(namespace: Namespace) -> re.Pattern[str]:
    names = {DEFAULT.schema_prefix + "[a-z0-9_]+", DEFAULT.registry_schema}
    names |= {namespace.schema_prefix + "[a-z0-9_]+", namespace.registry_schema}
    return re.compile(_SCHEMA_REFERENCE.format(names="|".join(sorted(names))), re.IGNORECASE)


_SQL_LITERAL = re.compile(r"'(?:[^']|'')*'")
_SEARCH_PATH = re.compile(r"\bsearch_path\b", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int | None  # None for squawk's: they point at a statement of the compiled SQL
    message: str
    source: str = "schema"  # "schema": the check of schema references; "squawk"
    rule: str | None = None  # squawk's rule name
    sql: str | None = None  # the statement squawk reports
    excerpt: str | None = None  # that statement on one line, cut around what squawk points at

    def __str__(self) -> str:
        if self.rule is not None:
            return f"{self.path}: squawk {self.rule}: {self.message} [{self.excerpt}]"
        return f"{self.path}:{self.line}: {self.message}"


def _call_name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _strings(node: ast.expr) -> Iterator[tuple[int, str]]:
    """Literal text inside an expression: plain strings, f-string parts, concatenations."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            yield sub.lineno, sub.value


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _describe(node: ast.expr) -> str:
    if isinstance(node, ast.Constant):
        return repr(node.value)
    return f"an expression ({ast.unparse(node)})"


class _Visitor(ast.NodeVisitor):
    def __init__(self, path: str, namespace: Namespace) -> None:
        self.path = path
        self.schema_reference = _schema_reference(namespace)
        self.findings: list[Finding] = []

    def add(self, line: int, message: str) -> None:
        self.findings.append(Finding(self.path, line, message))

    def visit_Call(self, node: ast.Call) -> None:
        name = _call_name(node.func)
        for keyword in node.keywords:
            if keyword.arg in SCHEMA_KWARGS and not _is_none(keyword.value):
                if name in IGNORES_TRANSLATE_MAP:
                    self.add(
                        node.lineno,
                        f"{name}(..., {keyword.arg}={_describe(keyword.value)}): Alembic renders this op with the "
                        "schema as written and ignores the translate map (alembic #555); it would reach outside "
                        "the project schema in every project. Drop the argument.",
                    )
                else:
                    self.add(
                        node.lineno,
                        f"{name or 'call'}(..., {keyword.arg}={_describe(keyword.value)}) names a schema; a "
                        "revision must only touch the project schema it runs in. Drop the argument.",
                    )
        if name in {"ForeignKey", "ForeignKeyConstraint"} and node.args:
            targets = node.args[:1] if name == "ForeignKey" else node.args[1:2]
            for target in targets:
                for line, value in _strings(target):
                    if value.count(".") >= 2:
                        self.add(
                            line,
                            f"{name}({value!r}) references another schema ({value.split('.')[0]}); refer to "
                            "'table.column' in the project schema.",
                        )
        if name in SQL_CALLS:
            for arg in node.args[:1]:
                self._check_sql(arg, name)
        self.generic_visit(node)

    def _check_sql(self, node: ast.expr, name: str) -> None:
        if isinstance(node, ast.Call) and _call_name(node.func) in SQL_CALLS:
            return  # execute(text("...")): the inner call is checked on its own
        for line, literal in _strings(node):
            value = _SQL_LITERAL.sub("''", literal)  # 'public.x' in quotes is a value, not a reference
            for match in self.schema_reference.finditer(value):
                self.add(
                    line,
                    f"{name}() SQL names schema {match.group('schema')!r} ({match.group(0).strip()!r}...): "
                    "raw SQL bypasses the translate map; use unqualified names, which resolve in the project "
                    "schema through the search_path.",
                )
            if _SEARCH_PATH.search(value):
                self.add(
                    line,
                    f"{name}() SQL changes the search_path, which is what keeps a migration inside its project "
                    "schema; remove it.",
                )


def check_source(source: str, path: str = "<revision>", namespace: Namespace = DEFAULT) -> list[Finding]:
    """Findings for one revision's source (of a chain in ``namespace``)."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        return [Finding(path, exc.lineno or 0, f"cannot parse: {exc.msg}")]
    visitor = _Visitor(path, namespace)
    visitor.visit(tree)
    return sorted(set(visitor.findings))


def revision_files(config_path: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every revision file of the chain configured by an alembic.ini (all branches, base first)."""
    path = resolve_config_path(config_path)
    script = load_script_directory(Config(str(path)), path)
    try:
        scripts = list(script.walk_revisions("base", "heads"))
    except CommandError as exc:
        raise ConfigurationError(f"cannot load the revision chain from {path}: {exc}") from None
    return [Path(s.path) for s in reversed(scripts)]


def check_files(paths: Iterable[Path], namespace: Namespace = DEFAULT) -> list[Finding]:
    findings: list[Finding] = []
    for path in paths:
        findings += check_source(path.read_text(encoding="utf-8"), display_path(path), namespace)
    return findings


def _namespace(config_path: str | os.PathLike[str] | None) -> Namespace:
    """The chain's namespace as its alembic.ini names it (read without loading the chain)."""
    path = resolve_config_path(config_path)
    return from_options(main_option(path, REGISTRY_SCHEMA_OPTION), main_option(path, SCHEMA_PREFIX_OPTION), path)


def check_chain(config_path: str | os.PathLike[str] | None = None) -> tuple[int, list[Finding]]:
    """(number of revisions checked, findings) for the chain of an alembic.ini."""
    files = revision_files(config_path)
    return len(files), check_files(files, _namespace(config_path))


@dataclass(frozen=True)
class LintReport:
    revisions: int
    findings: list[Finding]  # the schema check's and squawk's, revision by revision
    squawk_run: squawk.SquawkRun | None  # None: not run (use_squawk=False)

    def as_dict(self) -> dict[str, Any]:
        run = self.squawk_run
        return {
            "revisions": self.revisions,
            "findings": [asdict(f) for f in self.findings],
            "squawk": None
            if run is None
            else {
                "version": run.version,
                "excluded": list(run.excluded),
                "included": list(run.included),
                "acknowledged": [asdict(_squawk_finding(v)) for v in run.acknowledged],
                "unchecked": [{"path": display_path(u.revision_path), "reason": u.reason} for u in run.unchecked],
            },
        }


def _squawk_finding(violation: squawk.Violation) -> Finding:
    path = display_path(violation.revision_path)
    return Finding(path, None, violation.message, "squawk", violation.rule, violation.sql, violation.excerpt)


def lint_chain(config_path: str | os.PathLike[str] | None = None, *, use_squawk: bool = True) -> LintReport:
    """The schema check of every revision and, unless ``use_squawk=False``, squawk over each revision's
    compiled SQL. squawk must then be installed (``workspace-tool[squawk]``)."""
    files = revision_files(config_path)
    findings = check_files(files, _namespace(config_path))
    run = None
    if use_squawk:
        binary = squawk.find_binary()
        if binary is None:
            raise ConfigurationError(
                f"squawk is not installed, so the compiled SQL can't be checked: {squawk.INSTALL_HINT} "
                "(or lint --no-squawk for the schema check alone)"
            )
        run = squawk.run(Chain(resolve_config_path(config_path)), binary)
        order = {display_path(path): i for i, path in enumerate(files)}
        findings = sorted([*findings, *map(_squawk_finding, run.violations)], key=lambda f: order[f.path])
    return LintReport(len(files), findings, run)
