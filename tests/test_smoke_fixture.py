from __future__ import annotations

from conftest import schema_tables, schema_version

from workspace_tool import WorkspaceManager


def test_ensure_creates_schema_at_head(manager: WorkspaceManager) -> None:
    assert manager.ensure("smoke") == "project_smoke"
    assert "code_chunks" in schema_tables(manager.engine, "project_smoke")
    assert schema_version(manager.engine, "project_smoke") == manager.head
