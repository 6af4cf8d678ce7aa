"""``python -m workspace_tool`` runs the CLI."""

from .cli import main

main()
