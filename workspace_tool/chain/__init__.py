"""The shared revision chain: loading it (loading), its revisions and plans (revisions, plan), running
Alembic for a range (alembic_run), and checking it statically (lint, squawk)."""

from workspace_tool.chain.alembic_run import ALEMBIC_LOCK, BASE
from workspace_tool.chain.loading import CONFIG_ENV, display_path, load_script_directory, resolve_config_path
from workspace_tool.chain.plan import Plan, Step
from workspace_tool.chain.revisions import FAST_PATH_OPTION, Chain

__all__ = [
    "ALEMBIC_LOCK",
    "BASE",
    "CONFIG_ENV",
    "FAST_PATH_OPTION",
    "Chain",
    "Plan",
    "Step",
    "display_path",
    "load_script_directory",
    "resolve_config_path",
]
