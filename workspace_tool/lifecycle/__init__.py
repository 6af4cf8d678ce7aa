"""A tenant's life beyond provisioning and migrating: export and import (export.py, import_.py), clone,
move, bulk drop with quarantine (drop.py), SQL across tenants (exec.py), bulk ensure, and the per-project
Alembic verbs (revisions.py). The fleet-wide ones (bulk drop, exec) are fleet Operations with a task
(``drop_operation``, ``exec_operation``): run them with ``fleet.run(engine, chain, operation, RunSpec(...))``
(the layers contract keeps the fleet runner out of this package; the CLI calls it)."""

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
