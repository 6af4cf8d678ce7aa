"""workspace_tool.managers: the per-project managers (sync and async) and their sessions.

``cache`` is the "known at head" cache (workspace_tool.registry.known), under the name tests and
applications import it by: ``from workspace_tool.managers import cache; cache.clear()``."""

from workspace_tool.registry import known as cache

__all__ = ["cache"]
