"""The warm pool's settings in the chain's alembic.ini: its size (``workspace_pool_size``, default 0 = off)
and the grace another release's spares are kept for (``workspace_pool_grace``)."""

from __future__ import annotations

from workspace_tool.chain import Chain
from workspace_tool.errors import ConfigurationError
from workspace_tool.transactions import COMMITS

POOL_SIZE_OPTION = "workspace_pool_size"
GRACE_OPTION = "workspace_pool_grace"
DEFAULT_GRACE_S = 3600.0  # another release's spares are kept while it filled the pool within this many seconds
CLAIM_COMMIT_OPTION = "workspace_pool_claim_commit"


def configured_size(chain: Chain) -> int:
    """``workspace_pool_size`` in the chain's alembic.ini: how many spares to keep (0, the default: none)."""
    return chain.whole_number(
        POOL_SIZE_OPTION, 0, "it must be a whole number of spare schemas, 0 (the default) for no warm pool"
    )


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


def async_claim(chain: Chain) -> bool:
    """``workspace_pool_claim_commit`` in the chain's alembic.ini: ``async`` (the default) or ``durable``.

    ``async`` commits a claim sent alone (the sync manager's one round trip) with ``SET LOCAL
    synchronous_commit = off``: the claim no longer waits for its WAL flush (most of its cost on a disk that
    syncs in a millisecond or more: alone more than 1/20 of a fresh build). What that risks: a server crash
    within about three ``wal_writer_delay`` of the claim, before any later commit in the cluster flushed the
    WAL past it, undoes the claim: the spare is a spare again and the project does not exist (it held no
    data: WAL is flushed in order, so anything the application committed into it flushed the claim first).
    The next ``ensure`` that reads the database creates it again; a process that cached it as made gets
    "schema does not exist" once (a session then forgets it). Never corrupts anything; replicas see the
    claim when they see the WAL. ``durable`` waits for the flush, as the server's synchronous_commit says."""
    value = chain.option(CLAIM_COMMIT_OPTION, "async").strip().lower()
    if value not in COMMITS:
        raise ConfigurationError(
            f"{CLAIM_COMMIT_OPTION} = {value!r} in {chain.config_path}: it must be async (the default) or durable"
        )
    return value == "async"


def _check_size(size: int) -> int:
    if size < 0:
        raise ConfigurationError(f"a pool size is a number of spare schemas, 0 or more; got {size}")
    return size
