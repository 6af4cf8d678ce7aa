"""The warm pool's settings in the chain's alembic.ini: its size (``workspace_pool_size``, default 0 = off)
and the grace another release's spares are kept for (``workspace_pool_grace``)."""

from __future__ import annotations

from workspace_tool.chain import Chain
from workspace_tool.errors import ConfigurationError

POOL_SIZE_OPTION = "workspace_pool_size"
GRACE_OPTION = "workspace_pool_grace"
DEFAULT_GRACE_S = 3600.0  # another release's spares are kept while it filled the pool within this many seconds


def configured_size(chain: Chain) -> int:
    """``workspace_pool_size`` in the chain's alembic.ini: how many spares to keep (0, the default: none)."""
    value = chain.option(POOL_SIZE_OPTION, "0")
    try:
        size = int(value.strip())
    except ValueError:
        size = -1
    if size < 0:
        raise ConfigurationError(
            f"{POOL_SIZE_OPTION} = {value!r} in {chain.config_path}: it must be a whole number of spare "
            "schemas, 0 (the default) for no warm pool"
        )
    return size


def resolve_size(chain: Chain, size: int | None) -> int:
    """``size`` (checked), or the configured size when None."""
    return configured_size(chain) if size is None else _check_size(size)


def release_grace(chain: Chain) -> float:
    """``workspace_pool_grace`` in the chain's alembic.ini: seconds since another release last filled the pool
    during which its spares are kept (default 3600)."""
    value = chain.option(GRACE_OPTION, str(DEFAULT_GRACE_S))
    try:
        grace = float(value.strip())
    except ValueError:
        grace = -1.0
    if not grace >= 0:
        raise ConfigurationError(
            f"{GRACE_OPTION} = {value!r} in {chain.config_path}: it must be a number of seconds, 0 or more "
            f"(default {DEFAULT_GRACE_S:.0f}): how long another release's spares are kept after it last filled the pool"
        )
    return grace


def _check_size(size: int) -> int:
    if size < 0:
        raise ConfigurationError(f"a pool size is a number of spare schemas, 0 or more; got {size}")
    return size
