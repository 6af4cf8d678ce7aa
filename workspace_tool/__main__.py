"""``python -m workspace_tool`` runs the CLI."""

from workspace_tool.cli import main

main()
