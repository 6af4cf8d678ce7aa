"""Commands on the chain itself: `lint` and `verify-fast-path` check it, `init-chain` and `revision` write it."""

from __future__ import annotations

from pathlib import Path

import click

from workspace_tool.cli.context import AppContext, pass_app
from workspace_tool.cli.logs import note
from workspace_tool.cli.options import json_option
from workspace_tool.cli.render import emit, print_lint_report, print_verification
from workspace_tool.errors import NoChangesDetected

# alembic_env.MODELS_OPTION, spelled out so that --help doesn't load Alembic's runtime (a test checks it)
MODELS_OPTION = "workspace_models"
REVISION_COLUMNS = ["revision", "down_revision", "operations", "path"]


@click.command()
@click.option("--no-squawk", is_flag=True, help="Only the schema check: don't run squawk over the compiled SQL.")
@json_option
@pass_app
def lint(app: AppContext, no_squawk: bool, as_json: bool) -> None:
    """Check every revision of the chain, with no database.

    Statically, for references outside the project schema: schema= arguments (ignored by the translate
    map on ALTER-type ops), schema-qualified names in raw SQL, ForeignKeys into other schemas, search_path
    changes (file:line: message). Then squawk (the workspace-tool[squawk] extra) over each revision's
    compiled SQL, for locks, rewrites and breaking changes (file: squawk rule: message [statement]); rules
    are set in alembic.ini (workspace_squawk_exclude / workspace_squawk_include) and acknowledged per
    revision (workspace_squawk_ignore = [...]). One line per finding; exit 1 if there are any."""
    from workspace_tool.chain.lint import lint_chain

    report = lint_chain(app.config, use_squawk=not no_squawk)
    print_lint_report(report, as_json)
    if report.findings:
        click.get_current_context().exit(1)


@click.command(name="verify-fast-path")
@click.option(
    "--pool/--no-pool",
    default=None,
    help="Also compare a spare of the warm pool, renamed as a claim renames it, with a fresh schema "
    "(default: when workspace_pool_size in alembic.ini is above 0).",
)
@json_option
@pass_app
def verify_fast_path(app: AppContext, pool: bool | None, as_json: bool) -> None:
    """Provision scratch schemas online and through the fast path and compare their catalogs, for fresh
    provisioning and every upgrade and downgrade range (and a renamed spare of the warm pool); exit 1 on
    any difference. Nothing is kept: it all runs in a transaction that is rolled back."""
    from workspace_tool import verification

    report = verification.verify_fast_path(app.session_engine, app.manager.chain, pool=pool)
    print_verification(report, as_json)
    if not report.identical:
        click.get_current_context().exit(1)


@click.command()
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
    from workspace_tool.authoring import create_revision
    from workspace_tool.chain.autogenerate import load_metadata

    for flag, given in (("--metadata", metadata_ref), ("--allow-empty", allow_empty)):
        if given and not autogenerate:
            raise click.UsageError(f"{flag} only makes sense with --autogenerate")
    metadata = load_metadata(metadata_ref) if metadata_ref else None
    try:
        result = create_revision(
            message,
            config=app.config,
            autogenerate=autogenerate,
            engine=app.session_engine if autogenerate else None,
            target_metadata=metadata,
            rev_id=rev_id,
            allow_empty=allow_empty,
        )
    except NoChangesDetected:  # not a failure: there was nothing to write
        emit([], REVISION_COLUMNS, as_json=as_json)
        note("No changes detected: the models match the head; no revision written (--allow-empty writes one).")
        return
    emit([result.as_dict()], REVISION_COLUMNS, as_json=as_json)
    if autogenerate and result.operations == 0:
        note(f"No changes detected; wrote the empty revision {result.path} as asked.")
    else:
        note(f"Wrote {result.path}; review it, then `workspace-tool upgrade --all`.")


@click.command(name="init-chain")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--models",
    metavar="MODULE:ATTR",
    help=f"Your models' MetaData (or declarative base), written into alembic.ini as {MODELS_OPTION}. "
    "Default: a models.py written into DIRECTORY for your tables.",
)
@pass_app
def init_chain(app: AppContext, directory: str, models: str | None) -> None:
    """Start your application's own chain: alembic.ini (-c, default ./alembic.ini) naming your models, and
    DIRECTORY with env.py, script.py.mako, versions/ and models.py (unless --models names yours). Write your
    tables in the models, then `revision --autogenerate` writes the first revision."""
    from workspace_tool.authoring import init_chain as write_chain

    written = write_chain(directory, models=models, config=app.config)
    note(f"Wrote {', '.join(str(p) for p in written)}.")
    tables = "your models" if models else f"{Path(directory) / 'models.py'}"
    note(f'Next: write your tables in {tables}, then workspace-tool revision -m "create tables" --autogenerate')
