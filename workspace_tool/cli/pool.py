"""`pool fill`, `pool status`, `pool drain`: the warm pool of spare schemas at head (workspace_tool.spares)."""

from __future__ import annotations

import click

from workspace_tool.cli.context import AppContext, pass_app
from workspace_tool.cli.logs import note
from workspace_tool.cli.options import confirm, jobs_option, json_option, yes_option
from workspace_tool.cli.render import emit, to_json

SPARE_COLUMNS = ["schema", "revision", "chain", "state", "build_ms", "created_at"]


@click.group()
def pool() -> None:
    """The warm pool: spare schemas already at head, which ensure renames into a new project's schema
    (about a millisecond) instead of building it. Off until workspace_pool_size (alembic.ini) is set."""


@pool.command()
@click.option(
    "--size",
    type=click.IntRange(min=0),
    help="Spares to keep at head. Default: workspace_pool_size in alembic.ini.",
)
@jobs_option
@json_option
@pass_app
def fill(app: AppContext, size: int | None, jobs: int | None, as_json: bool) -> None:
    """Build spares until the pool holds --size at head; first drop the spares no release can claim
    (behind head and no release filled the pool for them within workspace_pool_grace, built under other
    default privileges, left half-built). Another release's spares are kept while it fills the pool, and
    spares ahead of this chain are never dropped: a rolling deploy serves both releases from the pool.

    Idempotent; a second fill running at the same time waits for the first, then finds the pool full.
    Refused, with nothing made, for a chain whose objects name their schema in stored text (a rename
    would not follow them). Run it from cron, or let the application refill in the background."""
    from workspace_tool import spares

    chain = app.manager.chain
    target = spares.resolve_size(chain, size)
    if target == 0 and size is None:
        raise click.UsageError(
            f"the pool size is 0: pass --size N, or set {spares.POOL_SIZE_OPTION} = N in {chain.config_path}"
        )
    report = spares.fill(app.engine, chain, target, jobs=jobs)
    if as_json:
        click.echo(to_json(report.as_dict()))
    claimed = f", {report.claimed} claimed meanwhile" if report.claimed else ""
    note(
        f"Pool: {report.ready} spare(s) ready at head {chain.head} (target {report.target}); built "
        f"{report.built}, dropped {report.dropped} that no release can claim{claimed}, in "
        f"{report.elapsed_ms / 1000:.2f}s"
    )
    if target and spares.configured_size(chain) == 0:
        click.echo(
            f"Warning: {spares.POOL_SIZE_OPTION} is 0 in {chain.config_path}, so nothing claims these spares "
            "unless the application's managers are given warm_pool=N: set "
            f"{spares.POOL_SIZE_OPTION} = N there to turn the pool on",
            err=True,
        )


@pool.command(name="status")
@json_option
@pass_app
def status_(app: AppContext, as_json: bool) -> None:
    """The spares: how many are ready at head, the target size, each spare's revision, chain and state
    (ready; other release: another release's, which still fills the pool; ahead: at a revision this chain
    doesn't know; stale: behind head or another chain's and no release fills the pool for it, dropped by
    the next fill; old privileges: built under other default privileges; building: not complete; missing;
    other role: made by another role, which alone can claim it); then, with more than one release, the
    spares of each (this one's first) and when it last filled the pool. Read-only."""
    from workspace_tool import spares
    from workspace_tool.spares.store import SpareState

    report = spares.status(app.engine, app.manager.chain)
    if as_json:
        click.echo(to_json(report.as_dict()))
        return
    emit(report.as_dict()["spares"], SPARE_COLUMNS, as_json=False)
    counts = report.counts()
    others = ", ".join(f"{n} {state}" for state, n in counts.items() if n and state != SpareState.READY)
    note(
        f"Pool: {report.ready} spare(s) ready at head {report.head} (target {report.target})"
        + (f"; {others}" if others else "")
    )
    if len([r for r in report.releases if r.spares or not r.this]) > 1:
        for release in report.releases:
            held = f"{report.ready} ready" if release.this else f"{release.spares} spare(s)"
            seen = (
                "never filled the pool"
                if release.last_filled_s is None
                else f"last filled the pool {release.last_filled_s:.0f}s ago"
            )
            this = " (this one)" if release.this else ""
            note(f"  release {release.revision}{this}: {held}, {seen} (chain {release.chain})")


@pool.command()
@yes_option
@pass_app
def drain(app: AppContext) -> None:
    """Drop every spare (they hold no data): new projects are built again until the pool is filled. It asks
    first on a terminal; without one, --yes confirms."""
    from workspace_tool import spares

    confirm("draining the warm pool drops every spare schema (new projects are built again until `pool fill`)")
    dropped = spares.drain(app.engine, app.manager.chain.namespace)
    note(f"Dropped {dropped} spare schema(s).")
