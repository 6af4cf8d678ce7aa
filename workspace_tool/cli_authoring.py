"""`workspace-tool revision`: write a revision for the shared chain. Parse, call one library function, render."""

from __future__ import annotations

import click

from .authoring import create_revision, load_metadata
from .cli import AppContext, json_option, main, pass_app
from .output import emit


@main.command()
@click.option("-m", "--message", required=True, help="What the revision changes (also its file name).")
@click.option(
    "--autogenerate",
    is_flag=True,
    help="Compare the models with a scratch project schema at head (created on the database, then dropped) "
    "and write the difference.",
)
@click.option(
    "--metadata",
    "metadata_ref",
    metavar="MODULE:ATTR",
    help="MetaData (or declarative base) to compare with. Default: workspace_tool.models:metadata.",
)
@click.option("--rev-id", metavar="ID", help="Revision id to use instead of a generated one.")
@json_option
@pass_app
def revision(
    app: AppContext, message: str, autogenerate: bool, metadata_ref: str | None, rev_id: str | None, as_json: bool
) -> None:
    """Write a new revision on top of the chain's head, in the chain's versions directory."""
    if metadata_ref and not autogenerate:
        raise click.UsageError("--metadata only makes sense with --autogenerate")
    metadata = load_metadata(metadata_ref) if metadata_ref else None
    result = create_revision(
        message,
        config=app.config,
        autogenerate=autogenerate,
        engine=app.engine if autogenerate else None,
        target_metadata=metadata,
        rev_id=rev_id,
    )
    emit([result.as_dict()], ["revision", "down_revision", "operations", "path"], as_json=as_json)
    if autogenerate and result.operations == 0:
        click.echo("No differences between the models and the head: the revision is empty.", err=True)
    else:
        click.echo(f"Wrote {result.path}; review it, then `workspace-tool upgrade --all`.", err=True)
