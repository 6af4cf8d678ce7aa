"""workspace-tool: one PostgreSQL schema per project, provisioned from one shared Alembic chain."""

from workspace_tool.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidProjectId,
    InvalidRoleName,
    InvalidSchemaName,
    LockTimeout,
    MigrationFailed,
    NoChangesDetected,
    PermissionDenied,
    RegistryError,
    UnknownRevision,
    UnmanagedSchema,
    WorkspaceAhead,
    WorkspaceError,
    WorkspaceNotFound,
    WorkspaceOutdated,
)
from workspace_tool.fleet.reader import ProjectStatus
from workspace_tool.managers.async_manager import ProjectWorkspaceManager
from workspace_tool.managers.sync_manager import WorkspaceManager
from workspace_tool.naming import schema_for
from workspace_tool.schema.migrate import EnsureResult

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailable",
    "EnsureResult",
    "InvalidProjectId",
    "InvalidRoleName",
    "InvalidSchemaName",
    "LockTimeout",
    "MigrationFailed",
    "NoChangesDetected",
    "PermissionDenied",
    "ProjectStatus",
    "ProjectWorkspaceManager",
    "RegistryError",
    "UnknownRevision",
    "UnmanagedSchema",
    "WorkspaceAhead",
    "WorkspaceError",
    "WorkspaceManager",
    "WorkspaceNotFound",
    "WorkspaceOutdated",
    "schema_for",
]
