"""`workspace-tool revision` and `init-chain`: write a chain and its revisions. Parse, call one library
function, render."""

from __future__ import annotations

import click

from workspace_tool.alembic_env import MODELS_OPTION
from workspace_tool.authoring import create_revision, init_chain
from workspace_tool.chain.autogenerate import load_metadata
from workspace_tool.cli import AppContext, json_option, main, pass_app
from workspace_tool.cli.render import emit
from workspace_tool.errors import NoChangesDetected


@main.command()
@click.option("-m", "--message", required=True, help="What the revision changes (also its file name).")
@click.option(
    "--autogenerate",
    is_flag=True,
    help="Compare the models with a scratch project schema at head (created on the database, then dropped) "
    "and write the difference; nothing is written when there is none.",
)
@click.option(
    "--metadata",
    "metadata_ref",
    metavar="MODULE:ATTR",
    help=f"MetaData (or declarative base) to compare with. Default: the chain's models ({MODELS_OPTION} in "
    "alembic.ini).",
)
@click.option("--allow-empty", is_flag=True, help="With --autogenerate: write the revision even if it is empty.")
@click.option("--rev-id", metavar="ID", help="Revision id to use instead of a generated one.")
@json_option
@pass_app
def revision(
    app: AppContext,
    message: str,
    autogenerate: bool,
    metadata_ref: str | None,
    allow_empty: bool,
    rev_id: str | None,
    as_json: bool,
) -> None:
    """Write a new revision on top of the chain's head, in the chain's versions directory."""
    for flag, given in (("--metadata", metadata_ref), ("--allow-empty", allow_empty)):
        if given and not autogenerate:
            raise click.UsageError(f"{flag} only makes sense with --autogenerate")
    metadata = load_metadata(metadata_ref) if metadata_ref else None
    columns = ["revision", "down_revision", "operations", "path"]
    try:
        result = create_revision(
            message,
            config=app.config,
            autogenerate=autogenerate,
            engine=app.engine if autogenerate else None,
            target_metadata=metadata,
            rev_id=rev_id,
            allow_empty=allow_empty,
        )
    except NoChangesDetected:  # not a failure: there was nothing to write
        emit([], columns, as_json=as_json)
        click.echo(
            "No changes detected: the models match the head; no revision written (--allow-empty writes one).",
            err=True,
        )
        return
    emit([result.as_dict()], columns, as_json=as_json)
    if autogenerate and result.operations == 0:
        click.echo(f"No changes detected; wrote the empty revision {result.path} as asked.", err=True)
    else:
        click.echo(f"Wrote {result.path}; review it, then `workspace-tool upgrade --all`.", err=True)


@main.command(name="init-chain")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--models",
    required=True,
    metavar="MODULE:ATTR",
    help=f"Your models' MetaData (or declarative base), written into alembic.ini as {MODELS_OPTION}.",
)
@pass_app
def init_chain_command(app: AppContext, directory: str, models: str) -> None:
    """Start your application's own chain: alembic.ini (-c, default ./alembic.ini) naming your models, and
    DIRECTORY with env.py, script.py.mako and versions/. Then `revision --autogenerate` writes its first
    revision."""
    written = init_chain(directory, models=models, config=app.config)
    click.echo(f"Wrote {', '.join(str(p) for p in written)}.", err=True)
    click.echo('Next: workspace-tool revision -m "create tables" --autogenerate', err=True)
