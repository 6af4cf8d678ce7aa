"""Process-local state shared by every manager and fleet run on the same database: projects known to be at
head (the "known at head" cache), and databases whose registry is bootstrapped. Fleet runs invalidate it."""

from __future__ import annotations

from sqlalchemy.engine import URL

from workspace_tool.flavor import Flavor

# database key -> {project_id: schema} for projects at the chain's head
_READY: dict[str, dict[str, str]] = {}
# database key -> its flavor (with the vector extension's schema), once the registry is known to be ready
_BOOTSTRAPPED: dict[str, Flavor] = {}


def database_key(url: URL, config_path: object) -> str:
    return f"{url.render_as_string(hide_password=True)}|{config_path}"


def ready_map(key: str) -> dict[str, str]:
    return _READY.setdefault(key, {})


def invalidate(key: str, project_ids: list[str] | None = None) -> None:
    """Forget projects (all of them with None) so the next ensure reads the database again."""
    ready = _READY.get(key)
    if ready is None:
        return
    if project_ids is None:
        ready.clear()
    else:
        for project_id in project_ids:
            ready.pop(project_id, None)


def invalidate_chain(config_path: object) -> None:
    """Forget every project known to be at head of this chain, on every database."""
    suffix = f"|{config_path}"
    for key, ready in _READY.items():
        if key.endswith(suffix):
            ready.clear()


def clear() -> None:
    """Forget everything, as a new process would: every project known to be at head, every registry known
    to be ready. For tests, and for a process that has changed the database behind the managers' back."""
    for ready in _READY.values():  # emptied in place: the managers hold these maps
        ready.clear()
    _BOOTSTRAPPED.clear()


def bootstrapped(key: str) -> Flavor | None:
    return _BOOTSTRAPPED.get(key)


def set_bootstrapped(key: str, flavor: Flavor) -> None:
    _BOOTSTRAPPED[key] = flavor
