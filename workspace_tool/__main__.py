"""``python -m workspace_tool`` runs the CLI as the ``workspace-tool`` program does (with its fast exit)."""

from workspace_tool.cli import run

run()
