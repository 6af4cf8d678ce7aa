"""The chain's graph recorded on disk (workspace_tool/chain/index.py, issue 13 section 6): a later process
reads the revisions, head and fingerprint without Alembic, and any change to the chain's files (a revision
added, edited or removed, alembic.ini edited) is seen by the next process as if there were no record."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from support.chains import ITEMS, ChainBuilder

from workspace_tool.chain import Chain
from workspace_tool.chain.index import CACHE_ENV
from workspace_tool.chain.loading import DIRECT_URL_OPTION, main_option
from workspace_tool.chain.plan import Path as PlanPath
from workspace_tool.registry.bootstrap import _MIGRATIONS_DIR, RegistryChain


def fresh(ini: Path, caplog: pytest.LogCaptureFixture) -> tuple[Chain, str]:
    """The chain as a new process loads it, and how: 'recorded' or 'read through Alembic'."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="workspace_tool.chain.revisions"):
        chain = Chain(ini.resolve())
    [how] = [m.group(1) for r in caplog.records if (m := re.search(r"\((recorded|read through Alembic), ", r.message))]
    return chain, how


def test_a_revision_added_edited_or_removed_or_the_ini_edited_is_seen_by_the_next_process(
    chain_builder: ChainBuilder, caplog: pytest.LogCaptureFixture
) -> None:
    ini = chain_builder.add("r1", ITEMS).ini
    first, how = fresh(ini, caplog)
    assert (first.head, how) == ("r1", "read through Alembic")
    again, how = fresh(ini, caplog)
    assert (again.head, again.revisions, again.fingerprint, how) == ("r1", ["r1"], first.fingerprint, "recorded")
    assert again.plan(None, "r1").path is PlanPath.FAST  # compiling reads the chain through Alembic then

    chain_builder.add("r2", "op.add_column('items', sa.Column('extra', sa.Integer))")
    added, how = fresh(ini, caplog)
    assert (added.head, added.revisions, how) == ("r2", ["r1", "r2"], "read through Alembic")

    r1 = chain_builder.versions / "r1.py"
    r1.write_text(r1.read_text() + "\nworkspace_online = True\n")  # edited: r1 must now run online
    edited, how = fresh(ini, caplog)
    assert (edited.plan(None, "r2").path, how) == (PlanPath.MIXED, "read through Alembic")
    assert edited.fingerprint != added.fingerprint
    assert fresh(ini, caplog)[1] == "recorded"

    ini.write_text(ini.read_text().replace("[alembic]\n", "[alembic]\nworkspace_fast_path = false\n"))
    no_fast_path, how = fresh(ini, caplog)
    assert (no_fast_path.fast_path_enabled, how) == (False, "read through Alembic")

    (chain_builder.versions / "r2.py").unlink()
    removed, how = fresh(ini, caplog)
    assert (removed.head, removed.revisions, how) == ("r1", ["r1"], "read through Alembic")


def test_a_cache_that_is_off_unwritable_or_garbled_only_means_reading_through_alembic(
    chain_builder: ChainBuilder, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ini = chain_builder.add("r1", ITEMS).ini
    monkeypatch.setenv(CACHE_ENV, "off")
    assert [fresh(ini, caplog)[1] for _ in range(2)] == ["read through Alembic"] * 2

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocked / "cache"))  # can't be created
    assert [fresh(ini, caplog)[1] for _ in range(2)] == ["read through Alembic"] * 2

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert [fresh(ini, caplog)[1] for _ in range(2)] == ["read through Alembic", "recorded"]
    [record] = (tmp_path / "cache" / "chains").iterdir()
    record.write_text(json.dumps({"format": 1, "config": str(ini.resolve()), "head": "zz"}))  # not a whole record
    chain, how = fresh(ini, caplog)
    assert (chain.head, how) == ("r1", "read through Alembic")
    assert fresh(ini, caplog)[1] == "recorded"


def test_the_registry_chain_read_without_alembic_is_the_one_alembic_reads() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(_MIGRATIONS_DIR), version_locations=[str(_MIGRATIONS_DIR)])
    registry = RegistryChain()
    assert registry.head == script.get_current_head()
    assert registry.known == {s.revision for s in script.walk_revisions()}


def test_the_direct_url_in_alembic_ini_is_never_written_to_the_record(
    chain_builder: ChainBuilder, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Its password stays in alembic.ini: the record keeps the other workspace_* options only."""
    ini = chain_builder.add("r1", ITEMS).ini
    secret = "Pooler-Bypass-Secret"
    ini.write_text(
        ini.read_text().replace(
            "[alembic]\n",
            f"[alembic]\nworkspace_pool_size = 3\nworkspace_direct_url = postgresql://app:{secret}@db:5432/app\n",
        )
    )
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert fresh(ini, caplog)[1] == "read through Alembic"
    recorded, how = fresh(ini, caplog)
    assert (how, recorded.option("workspace_pool_size", "0")) == ("recorded", "3")
    [record] = (tmp_path / "cache" / "chains").iterdir()
    assert "workspace_pool_size" in record.read_text() and secret not in record.read_text()
    assert main_option(ini, DIRECT_URL_OPTION) == f"postgresql://app:{secret}@db:5432/app"  # read where it is
