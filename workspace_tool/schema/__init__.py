"""workspace_tool.schema."""
