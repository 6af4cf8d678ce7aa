"""workspace-tool: one PostgreSQL schema per project, provisioned from one shared Alembic chain.

The public API. The managers and result types are imported on first use (``import workspace_tool`` stays
cheap: a CLI command or a pytest run that doesn't need SQLAlchemy's ORM or asyncio doesn't pay for them).
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from workspace_tool.errors import (
    CommitsUnconfirmed,
    ConfigurationError,
    DatabaseUnavailable,
    HeadModelFailed,
    InvalidProjectId,
    InvalidRoleName,
    InvalidSchemaName,
    LockTimeout,
    MigrationFailed,
    NoChangesDetected,
    NonTransactionalFailed,
    PermissionDenied,
    PoolRefused,
    RegistryError,
    RevisionFailed,
    SessionRequired,
    UnknownRevision,
    UnmanagedSchema,
    WorkspaceAhead,
    WorkspaceError,
    WorkspaceNotFound,
    WorkspaceOutdated,
)
from workspace_tool.namespace import InvalidNamespace, Namespace, OtherNamespace
from workspace_tool.naming import schema_for

# The library logs to "workspace_tool" and its children (workspace_tool.schema.migrate, ...): what ran for each
# schema, its path and timings, retries, batch reads; DEBUG adds the SQL sent on the raw driver. The
# application decides where that goes; without its own handlers nothing is printed (the CLI's -v/-q set it).
logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from workspace_tool.managers.async_manager import AsyncWorkspaceManager, ProjectWorkspaceManager
    from workspace_tool.managers.sync_manager import WorkspaceManager
    from workspace_tool.schema.migrate import EnsureResult
    from workspace_tool.status import ProjectStatus

_LAZY = {
    "AsyncWorkspaceManager": "workspace_tool.managers.async_manager",
    "ProjectWorkspaceManager": "workspace_tool.managers.async_manager",
    "WorkspaceManager": "workspace_tool.managers.sync_manager",
    "EnsureResult": "workspace_tool.schema.migrate",
    "ProjectStatus": "workspace_tool.status",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'workspace_tool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AsyncWorkspaceManager",
    "CommitsUnconfirmed",
    "ConfigurationError",
    "DatabaseUnavailable",
    "EnsureResult",
    "HeadModelFailed",
    "InvalidNamespace",
    "InvalidProjectId",
    "InvalidRoleName",
    "InvalidSchemaName",
    "LockTimeout",
    "MigrationFailed",
    "Namespace",
    "NoChangesDetected",
    "NonTransactionalFailed",
    "OtherNamespace",
    "PermissionDenied",
    "PoolRefused",
    "ProjectStatus",
    "ProjectWorkspaceManager",
    "RegistryError",
    "RevisionFailed",
    "SessionRequired",
    "UnknownRevision",
    "UnmanagedSchema",
    "WorkspaceAhead",
    "WorkspaceError",
    "WorkspaceManager",
    "WorkspaceNotFound",
    "WorkspaceOutdated",
    "schema_for",
]
