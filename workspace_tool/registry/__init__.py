"""project_registry: the table of projects (table) and its bootstrap with the vector extension (bootstrap)."""

from workspace_tool.registry.bootstrap import (
    PROBE,
    VERSION_TABLE,
    RegistryChain,
    bootstrap,
    present,
    probed,
    registry_ready,
)
from workspace_tool.registry.table import (
    DELETE,
    MARK_FAILED,
    REGISTRY_SCHEMA,
    REGISTRY_TABLE,
    SELECT_ALL,
    RegistryRow,
    expect_version_sql,
    update_sql,
    upsert_sql,
)

__all__ = [
    "DELETE",
    "MARK_FAILED",
    "PROBE",
    "REGISTRY_SCHEMA",
    "REGISTRY_TABLE",
    "SELECT_ALL",
    "VERSION_TABLE",
    "RegistryChain",
    "RegistryRow",
    "bootstrap",
    "expect_version_sql",
    "present",
    "probed",
    "registry_ready",
    "update_sql",
    "upsert_sql",
]
