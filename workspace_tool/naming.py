"""Project id -> schema name in the default namespace (``project_``; see workspace_tool.namespace for a
chain's own): the one place that validates, before any SQL is sent."""

from __future__ import annotations

from workspace_tool.namespace import DEFAULT, DEFAULT_SCHEMA_PREFIX, MAX_PROJECT_ID_LENGTH

SCHEMA_PREFIX = DEFAULT_SCHEMA_PREFIX
SCHEMA_LIKE = DEFAULT.schema_like  # LIKE: project schemas ('_' matched literally)
__all__ = [
    "MAX_PROJECT_ID_LENGTH",
    "SCHEMA_LIKE",
    "SCHEMA_PREFIX",
    "is_project_schema",
    "project_for",
    "schema_for",
    "validate_schema_name",
]


def schema_for(project_id: object) -> str:
    """Return the schema of a project id, or raise InvalidProjectId naming the rule."""
    return DEFAULT.schema_for(project_id)


def project_for(schema: str) -> str:
    """Inverse of schema_for (one-to-one)."""
    return DEFAULT.project_id_for(schema)


def validate_schema_name(schema: object) -> str:
    return DEFAULT.validate_schema_name(schema)


def is_project_schema(name: str) -> bool:
    return DEFAULT.is_project_schema(name)
