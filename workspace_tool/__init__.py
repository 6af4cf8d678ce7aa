"""workspace-tool: one PostgreSQL schema per project, provisioned from one shared Alembic chain."""

from .async_manager import ProjectWorkspaceManager
from .errors import (
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
from .inspection import ProjectStatus
from .manager import WorkspaceManager
from .naming import schema_for
from .provisioning import EnsureResult

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
