"""A chain's namespace in the database: the schema of its registry and the prefix of its project schemas
(alembic.ini ``workspace_registry_schema``, ``workspace_schema_prefix``; defaults ``project_registry`` and
``project_``). Two chains (two applications) share a database when each has its own: every command, the
managers, the fleet and the warm pool work within the chain's namespace and leave the other's schemas,
registry rows and spares alone.

A ``Namespace`` owns the mapping project id <-> schema name (``schema_for``, ``project_id_for``) and the
registry's name. The registry's SQL is written once, against the default registry schema, and translated
by ``sql`` (as Alembic's schema_translate_map does for Table objects, which text() is not): the default
namespace sends it unchanged.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

from workspace_tool.errors import ConfigurationError, InvalidProjectId, InvalidSchemaName, WorkspaceError

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import TextClause

REGISTRY_SCHEMA_OPTION = "workspace_registry_schema"
SCHEMA_PREFIX_OPTION = "workspace_schema_prefix"
DEFAULT_REGISTRY_SCHEMA = "project_registry"
DEFAULT_SCHEMA_PREFIX = "project_"
MAX_PROJECT_ID_LENGTH = 50
SPARE_BASE = "workspace_spare_"  # a spare's name: SPARE_BASE [+ the prefix, outside the default] + 16 hex
_MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1
_PROJECT_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")
_PREFIX = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*_")
_REGISTRY_IN_SQL = re.compile(rf"\b{DEFAULT_REGISTRY_SCHEMA}\.")
_MAX_PREFIX = _MAX_IDENTIFIER - MAX_PROJECT_ID_LENGTH  # so that every project's schema name fits


class InvalidNamespace(ConfigurationError):
    """A registry schema or schema prefix in alembic.ini that can't name a chain's namespace."""


class OtherNamespace(WorkspaceError):
    """The project's schema is another chain's: registered in another namespace's registry (two chains share
    the database, see workspace_tool.namespace). Nothing is changed."""

    def __init__(self, project_id: str, schema: str, registry: str, other_project: str) -> None:
        self.project_id = project_id
        self.schema = schema
        self.registry = registry
        super().__init__(
            f"schema {schema} of project {project_id} belongs to another chain: it is registered in {registry} "
            f"(as project {other_project}), not in this chain's registry; nothing was changed. Run the command "
            "with that chain's alembic.ini (-c), or give this chain a schema prefix of its own "
            "(workspace_schema_prefix)"
        )


def _reason(project_id: str) -> str:
    if not project_id:
        return "it is empty"
    if len(project_id) > MAX_PROJECT_ID_LENGTH:
        return f"it is {len(project_id)} characters long, more than {MAX_PROJECT_ID_LENGTH}"
    if project_id.startswith("-") or project_id.endswith("-"):
        return "it starts or ends with a hyphen"
    if "--" in project_id:
        return "it has two hyphens in a row"
    bad = next(ch for ch in project_id if not ("a" <= ch <= "z" or "0" <= ch <= "9" or ch == "-"))
    return f"character {bad!r} is not allowed"


@dataclass(frozen=True)
class Namespace:
    """Where a chain's projects and registry live: ``registry_schema`` and ``schema_prefix``."""

    registry_schema: str = DEFAULT_REGISTRY_SCHEMA
    schema_prefix: str = DEFAULT_SCHEMA_PREFIX

    def __post_init__(self) -> None:
        registry, prefix = self.registry_schema, self.schema_prefix
        if not isinstance(registry, str) or len(registry) > _MAX_IDENTIFIER or not _IDENTIFIER.fullmatch(registry):
            raise InvalidNamespace(
                f"invalid registry schema {registry!r}: it must be 1-{_MAX_IDENTIFIER} characters of a-z, 0-9 and _, "
                "starting with a letter (^[a-z][a-z0-9_]*$)"
            )
        if not isinstance(prefix, str) or len(prefix) > _MAX_PREFIX or not _PREFIX.fullmatch(prefix):
            raise InvalidNamespace(
                f"invalid schema prefix {prefix!r}: it must be 2-{_MAX_PREFIX} characters of a-z, 0-9 and _, "
                "starting with a letter and ending with one _, no two _ in a row (e.g. app_)"
            )
        if registry.startswith(prefix) and registry != prefix + "registry":
            raise InvalidNamespace(
                f"registry schema {registry!r} starts with the schema prefix {prefix!r}: it would be taken for a "
                f"project's schema; name it outside the prefix (e.g. {prefix.rstrip('_')}_registry)"
            )
        for reserved, why in ((SPARE_BASE, "the warm pool's spare schemas"), ("pg_", "PostgreSQL's own schemas")):
            if prefix.startswith(reserved) or registry.startswith(reserved):
                raise InvalidNamespace(f"names starting with {reserved} are {why}: choose another registry or prefix")

    @property
    def is_default(self) -> bool:
        return self == DEFAULT

    def describe(self) -> str:
        """'registry X, schemas P*': how a message names it."""
        return f"registry {self.registry_schema}, schemas {self.schema_prefix}*"

    # ------------------------------------------------------------------ project id <-> schema
    def schema_for(self, project_id: object) -> str:
        """The schema of a project id, or raise InvalidProjectId naming the rule."""
        if not isinstance(project_id, str):
            raise InvalidProjectId(project_id, f"it is a {type(project_id).__name__}, not a string")
        if len(project_id) > MAX_PROJECT_ID_LENGTH or not _PROJECT_ID.fullmatch(project_id):
            raise InvalidProjectId(project_id, _reason(project_id))
        schema = self.schema_prefix + project_id.replace("-", "_")
        if schema == self.registry_schema:
            raise InvalidProjectId(project_id, "it is reserved (its schema would be the registry's)")
        return schema

    def project_id_for(self, schema: str) -> str:
        """Inverse of schema_for (one-to-one)."""
        return self.validate_schema_name(schema)[len(self.schema_prefix) :].replace("_", "-")

    def validate_schema_name(self, schema: object) -> str:
        if not isinstance(schema, str) or not self.is_project_schema(schema):
            raise InvalidSchemaName(schema, self.schema_prefix)
        return schema

    def is_project_schema(self, name: str) -> bool:
        """The prefix, then a project id with its hyphens (or some) written as underscores."""
        return (
            len(name) - len(self.schema_prefix) <= MAX_PROJECT_ID_LENGTH
            and _project_schema(self.schema_prefix).fullmatch(name) is not None
            and name != self.registry_schema
        )

    @property
    def schema_like(self) -> str:
        """A LIKE pattern of the project schemas' names ('_' matched literally)."""
        return self.schema_prefix.replace("_", "\\_") + "%"

    # ------------------------------------------------------------------ the warm pool's spares
    @property
    def spare_prefix(self) -> str:
        """Spares are named outside every namespace's projects: this prefix and 16 hex digits."""
        return SPARE_BASE if self.is_default else SPARE_BASE + self.schema_prefix

    @property
    def spare_regex(self) -> str:
        """A POSIX regular expression of the names spares of this namespace have (its prefix, then no '_'):
        never another namespace's (a prefix ends with '_', so theirs have one more)."""
        return f"^{self.spare_prefix}[^_]*$"

    # ------------------------------------------------------------------ the registry's SQL
    def table(self, name: str) -> str:
        """A registry table or function, qualified: ``registry_schema.name``."""
        return f"{self.registry_schema}.{name}"

    @overload
    def sql(self, statement: str) -> str: ...
    @overload
    def sql(self, statement: TextClause) -> TextClause: ...
    def sql(self, statement: str | TextClause) -> str | TextClause:
        """``statement`` (written against the default registry) for this namespace's registry."""
        if self.is_default:
            return statement
        if isinstance(statement, str):
            return _REGISTRY_IN_SQL.sub(self.registry_schema + ".", statement)
        return _translated_text(statement, self.registry_schema)


@functools.lru_cache(maxsize=64)
def _project_schema(prefix: str) -> re.Pattern[str]:
    """A project schema's name under ``prefix`` (``_PROJECT_ID`` with ``_`` as well as ``-`` between its
    parts): one match per name, for the fleet's reads of thousands."""
    return re.compile(re.escape(prefix) + r"[a-z0-9]+(?:[-_][a-z0-9]+)*")


@functools.lru_cache(maxsize=512)
def _translated_text(statement: TextClause, registry: str) -> TextClause:
    from sqlalchemy import text  # not on `import workspace_tool`

    return text(_REGISTRY_IN_SQL.sub(registry + ".", statement.text))


DEFAULT = Namespace()


def from_options(registry_schema: str | None, schema_prefix: str | None, config_path: Path | str) -> Namespace:
    """The namespace alembic.ini names (defaults for what it leaves out); a one-line error naming the file."""
    try:
        return Namespace(registry_schema or DEFAULT_REGISTRY_SCHEMA, schema_prefix or DEFAULT_SCHEMA_PREFIX)
    except InvalidNamespace as exc:
        raise InvalidNamespace(f"{exc} ({REGISTRY_SCHEMA_OPTION} / {SCHEMA_PREFIX_OPTION} in {config_path})") from None
