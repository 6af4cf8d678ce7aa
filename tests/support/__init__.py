"""What the tests share, beside the fixtures of conftest.py, by concern: the example chain and tiny chains
(chains), the database's state (db), what tests put in it (data), the CLI, Alembic and psql (cli),
concurrency (concurrency) and Citus (citus). A test module imports from these (``from support.db import
...``), never from another test module."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from workspace_tool.chain.index import CACHE_ENV

# The graph records (workspace_tool/chain/index.py) of the run's many temporary chains go to a directory of
# the run's own (its subprocesses too), not the user's cache.
if CACHE_ENV not in os.environ:
    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="wst-test-chains-")
    atexit.register(shutil.rmtree, os.environ[CACHE_ENV], True)
