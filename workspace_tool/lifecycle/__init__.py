"""A tenant's life beyond provisioning and migrating: export and import (export.py, import_.py), clone,
move, bulk drop with quarantine (drop.py), SQL across tenants (exec.py), bulk ensure, and the per-project
Alembic verbs (revisions.py). The fleet-wide ones run through the fleet runner (fleet_run.py)."""

from workspace_tool.lifecycle.clone import CloneResult, clone_project
from workspace_tool.lifecycle.errors import (
    ChainMismatch,
    ExportDamaged,
    LifecycleRefused,
    NotAnExport,
    NotQuarantined,
    ProjectExists,
)
from workspace_tool.lifecycle.export import ExportResult, export_project
from workspace_tool.lifecycle.import_ import ImportResult, import_project

__all__ = [
    "ChainMismatch",
    "CloneResult",
    "ExportDamaged",
    "ExportResult",
    "ImportResult",
    "LifecycleRefused",
    "NotAnExport",
    "NotQuarantined",
    "ProjectExists",
    "clone_project",
    "export_project",
    "import_project",
]
