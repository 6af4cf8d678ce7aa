"""export / import: one project's rows to a file and back, into the same database or another one running
the same chain; a bad file, a wrong chain or an existing id is refused in one line with nothing changed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support.chains import ALEMBIC_INI, HEAD, ITEMS, MAIN_REVISIONS
from support.cli import assert_one_line_error, run_cli
from support.data import add_rows, damage, data_rows
from support.db import catalog, database_state

from workspace_tool import WorkspaceManager
from workspace_tool.chain import Chain
from workspace_tool.lifecycle import (
    ChainMismatch,
    ExportDamaged,
    NotAnExport,
    ProjectExists,
    export_project,
    import_project,
)


def test_export_then_import_into_another_database_gives_equal_rows_at_the_source_revision(
    engine: sa.Engine, filled_source: str, other_engine: sa.Engine, tmp_path: Path
) -> None:
    chain = Chain.load(ALEMBIC_INI)
    file = tmp_path / "src.wstx"
    exported = export_project(engine, chain, filled_source, file)
    assert exported.rows == 1 + 1 + 40 and exported.revision == HEAD
    imported = import_project(other_engine, chain, file)
    assert imported.to_revision == HEAD and imported.rows == exported.rows
    before = data_rows(engine, "project_src")
    assert data_rows(other_engine, "project_src") == before
    assert len(before["code_chunks"]) == 40 and "[" in before["code_chunks"][0]  # the vectors, as text
    # the same tables, columns and indexes (the HNSW index built after the rows went in, as it was)
    assert catalog(other_engine, "project_src") == catalog(engine, "project_src")
    with other_engine.begin() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM project_src.alembic_version")).scalar() == HEAD
        row = conn.execute(sa.text("SELECT revision, status, last_action FROM project_registry.workspace_config")).one()
        assert tuple(row) == (HEAD, "ready", "import")
    # independent of the source: the source's rows change, the copy's don't
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM project_src.code_chunks"))
    assert len(data_rows(other_engine, "project_src")["code_chunks"]) == 40


def test_import_sets_the_sequences_past_the_copied_ids(engine: sa.Engine, tmp_path: Path, chain_builder: Any) -> None:
    ini = chain_builder.add("a1", ITEMS, 'op.drop_table("items")').ini
    chain = Chain.load(ini)
    WorkspaceManager(engine, ini).ensure("seq")
    add_rows(engine, "seq", "a", "b", "c")
    file = tmp_path / "seq.wstx"
    export_project(engine, chain, "seq", file)
    import_project(engine, chain, file, as_id="seq-copy")
    with engine.begin() as conn:
        new_id = conn.execute(sa.text("INSERT INTO project_seq_copy.items (name) VALUES ('d') RETURNING id")).scalar()
    assert new_id == 4


def test_import_at_an_older_revision_and_upgrade(
    engine: sa.Engine, manager: WorkspaceManager, other_engine: sa.Engine, tmp_path: Path
) -> None:
    chain = Chain.load(ALEMBIC_INI)
    old = MAIN_REVISIONS[-2]
    manager.ensure("old")
    run_cli(
        "--database-url", engine.url.render_as_string(hide_password=False), "downgrade", "old", "--to", old, "--yes"
    )
    file = tmp_path / "old.wstx"
    assert export_project(engine, chain, "old", file).revision == old
    assert import_project(other_engine, chain, file).to_revision == old
    upgraded = import_project(other_engine, chain, file, as_id="old-up", upgrade=True)
    assert upgraded.revision == old and upgraded.to_revision == HEAD
    with other_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM project_old_up.alembic_version")).scalar() == HEAD


def test_import_refuses_an_existing_id_and_changes_nothing(
    engine: sa.Engine, filled_source: str, tmp_path: Path
) -> None:
    chain = Chain.load(ALEMBIC_INI)
    file = tmp_path / "src.wstx"
    export_project(engine, chain, filled_source, file)
    state = database_state(engine)
    with pytest.raises(ProjectExists):
        import_project(engine, chain, file)
    assert database_state(engine) == state
    import_project(engine, chain, file, as_id="copy")  # under another id it goes in
    assert data_rows(engine, "project_copy") == data_rows(engine, "project_src")


def test_a_damaged_or_foreign_file_is_refused_with_nothing_left_behind(
    engine: sa.Engine, filled_source: str, tmp_path: Path
) -> None:
    chain = Chain.load(ALEMBIC_INI)
    file = tmp_path / "src.wstx"
    export_project(engine, chain, filled_source, file)
    state = database_state(engine)
    damaged = tmp_path / "damaged.wstx"
    damaged.write_bytes(file.read_bytes())
    damage(damaged, len(damaged.read_bytes()) // 2)  # inside code_chunks' vectors
    with pytest.raises(ExportDamaged, match="checksum"):
        import_project(engine, chain, damaged, as_id="dmg")
    cut = tmp_path / "cut.wstx"
    cut.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(ExportDamaged, match="cut short"):
        import_project(engine, chain, cut, as_id="cut")
    foreign = tmp_path / "notes.txt"
    foreign.write_text("hello\n")
    with pytest.raises(NotAnExport):
        import_project(engine, chain, foreign, as_id="foreign")
    assert database_state(engine) == state


def test_an_export_of_another_chain_is_refused(
    engine: sa.Engine, filled_source: str, tmp_path: Path, chain_builder: Any
) -> None:
    chain = Chain.load(ALEMBIC_INI)
    file = tmp_path / "src.wstx"
    export_project(engine, chain, filled_source, file)
    other = Chain.load(chain_builder.add("a1", ITEMS, 'op.drop_table("items")').ini)
    state = database_state(engine)
    with pytest.raises(ChainMismatch, match="this chain does not have"):
        import_project(engine, other, file, as_id="elsewhere")
    assert database_state(engine) == state


def test_export_never_replaces_what_is_not_a_regular_file(
    engine: sa.Engine, filled_source: str, tmp_path: Path
) -> None:
    """The export is written beside its target, then renamed over it: over a FIFO (or a device such as
    /dev/full) that would replace the node itself. It is refused instead; through a symlink the file it
    points to gets the export and the link stays."""
    chain = Chain.load(ALEMBIC_INI)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    line = assert_one_line_error(
        run_cli("--database-url", engine.url.render_as_string(hide_password=False), "export", "src", "-o", str(fifo))
    )
    assert "not a regular file" in line and "nothing was exported" in line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    real, link = tmp_path / "real.wstx", tmp_path / "link.wstx"
    real.write_bytes(b"old")
    link.symlink_to(real)
    result = export_project(engine, chain, "src", link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.stat().st_size == result.bytes and real.read_bytes() != b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.wstx", "pipe", "real.wstx"]


def test_cli_export_import_and_their_one_line_errors(
    engine: sa.Engine, filled_source: str, url_string: str, tmp_path: Path
) -> None:
    file = tmp_path / "src.wstx"
    done = run_cli("--database-url", url_string, "export", "src", "-o", str(file), "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 42
    state = database_state(engine)
    for args, fragment in [
        (("export", "nope", "-o", str(tmp_path / "x")), "nope"),
        (("export", "src", "-o", str(tmp_path / "no" / "such" / "dir.wstx")), "cannot write"),
        (("import", str(file)), "already exists"),
        (("import", str(tmp_path / "missing.wstx")), "missing.wstx"),
        (("import", str(file), "--as", "Bad Id"), "invalid project id"),
    ]:
        assert_one_line_error(run_cli("--database-url", url_string, *args), fragment)
    assert database_state(engine) == state
    assert not (tmp_path / "x").exists()
    done = run_cli("--database-url", url_string, "import", str(file), "--as", "again", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["project_id"] == "again"
