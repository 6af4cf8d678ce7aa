"""Bulk ensure: `ensure --ids-from FILE --jobs N` provisions many projects at once through the fleet runner."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from support.chains import HEAD
from support.cli import assert_one_line_error, run_cli
from support.db import assert_consistent, database_state


def test_ensure_ids_from_a_file_with_jobs(engine: sa.Engine, url_string: str, tmp_path: Path) -> None:
    listing = tmp_path / "ids.txt"
    listing.write_text("\n".join(f"bulk-{i}" for i in range(12)) + "\n# a comment\n")
    done = run_cli("--database-url", url_string, "ensure", "named", "--ids-from", str(listing), "--jobs", "3", "--json")
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["jobs"] == 3 and report["operation"] == "provision"
    assert sorted(r["project_id"] for r in report["results"] if r["status"] == "ok") == sorted(
        ["named", *(f"bulk-{i}" for i in range(12))]
    )
    versions = assert_consistent(engine)
    assert len(versions) == 13 and set(versions.values()) == {HEAD}
    again = run_cli("--database-url", url_string, "ensure", "--ids-from", str(listing), "--json")
    assert {r["status"] for r in json.loads(again.stdout)["results"]} == {"skipped"}


def test_bulk_ensure_bad_input_changes_nothing(engine: sa.Engine, url_string: str, tmp_path: Path) -> None:
    listing = tmp_path / "ids.txt"
    listing.write_text("good-1\nBad Id\n")
    state = database_state(engine)
    assert_one_line_error(
        run_cli("--database-url", url_string, "ensure", "--ids-from", str(listing), "--jobs", "2"), "invalid project id"
    )
    assert database_state(engine) == state
