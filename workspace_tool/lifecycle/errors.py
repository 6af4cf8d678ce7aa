"""The errors of the lifecycle commands: each one line that says what to do; nothing was changed."""

from __future__ import annotations

from workspace_tool.errors import WorkspaceError


class NotAnExport(WorkspaceError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} is not a workspace-tool export ({reason}): nothing was imported")


class ExportDamaged(WorkspaceError):
    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path} is damaged ({what}): nothing was imported; export the project again")


class ProjectExists(WorkspaceError):
    def __init__(self, project_id: str, schema: str) -> None:
        self.project_id = project_id
        super().__init__(
            f"project {project_id!r} already exists (schema {schema} or its registry row): nothing was changed; "
            "pick another id (--as ID), or drop it first"
        )


class ChainMismatch(WorkspaceError):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what}: nothing was changed; use the chain the export was made with (or a later one)")


class NotQuarantined(WorkspaceError):
    def __init__(self, project_id: str) -> None:
        super().__init__(
            f"project {project_id!r} has no quarantined copy to restore or purge (drop --retain keeps one)"
        )


class LifecycleRefused(WorkspaceError):
    """Any other refusal of a lifecycle command, with its reason (one line, nothing changed)."""
