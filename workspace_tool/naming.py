"""Project id -> schema name: the one place that validates, before any SQL is sent."""

from __future__ import annotations

import re

from workspace_tool.errors import InvalidProjectId, InvalidSchemaName

SCHEMA_PREFIX = "project_"
SCHEMA_LIKE = SCHEMA_PREFIX.replace("_", r"\_") + "%"  # LIKE: project schemas ('_' matched literally)
MAX_PROJECT_ID_LENGTH = 50
_PROJECT_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_SCHEMA = re.compile(r"project_[a-z0-9]+(?:_[a-z0-9]+)*")
# project_registry holds the registry itself: no project may map onto it.
RESERVED_PROJECT_IDS = frozenset({"registry"})


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


def schema_for(project_id: object) -> str:
    """Return the schema of a project id, or raise InvalidProjectId naming the rule."""
    if not isinstance(project_id, str):
        raise InvalidProjectId(project_id, f"it is a {type(project_id).__name__}, not a string")
    if len(project_id) > MAX_PROJECT_ID_LENGTH or not _PROJECT_ID.fullmatch(project_id):
        raise InvalidProjectId(project_id, _reason(project_id))
    if project_id in RESERVED_PROJECT_IDS:
        raise InvalidProjectId(project_id, "it is reserved (its schema would be the registry's)")
    return SCHEMA_PREFIX + project_id.replace("-", "_")


def project_for(schema: str) -> str:
    """Inverse of schema_for (one-to-one)."""
    return validate_schema_name(schema)[len(SCHEMA_PREFIX) :].replace("_", "-")


def validate_schema_name(schema: object) -> str:
    if (
        not isinstance(schema, str)
        or len(schema) > len(SCHEMA_PREFIX) + MAX_PROJECT_ID_LENGTH
        or not _SCHEMA.fullmatch(schema)
        or schema[len(SCHEMA_PREFIX) :] in RESERVED_PROJECT_IDS
    ):
        raise InvalidSchemaName(schema)
    return schema


def is_project_schema(name: str) -> bool:
    return (
        len(name) <= len(SCHEMA_PREFIX) + MAX_PROJECT_ID_LENGTH
        and bool(_SCHEMA.fullmatch(name))
        and name[len(SCHEMA_PREFIX) :] not in RESERVED_PROJECT_IDS
    )
