"""workspace_tool.managers."""
