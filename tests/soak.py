"""The live-application soak (issue 18): an application keeps working while every fleet command runs beside
it, through a rolling deploy, for a bounded time; then invariants are checked. Imported by the suite
(tests/test_soak.py, a short run) and by the benchmark (``python benchmarks/run.py --only soak --minutes N``,
a longer one, reporting the rates); this file is also the application process itself
(``python tests/soak.py app ...``, started by ``run``).

Two releases of the application share one database: release A runs the example chain (head N), release B
the same chain plus one revision (N+1: a nullable column and an index on repositories). Each release is an
application process (``App``: a WorkspaceManager with the warm pool on and ``refill=True``, several
threads at a steady rate) that creates projects (``ensure``: a spare claimed, or built), writes rows
(repositories and code_files, through ``mgr.connect()`` and ``mgr.session()``, each with a unique
marker, logged once committed), reads them back (a read sees only its own project's rows, and every write
this process logged before it), and drops projects (``mgr.drop``), plus the fleet commands of that release
run as processes beside it (the CLI, ``--json``): ``pool fill`` every second or so (cron), and in turn
``status``, ``check``, ``pool status`` and, for the release that is the fleet's, ``upgrade --all``.

The run has four phases:

1. *solo*: release A alone, on projects it shares with B (created beforehand at N, never dropped);
2. *rolling*: release B deployed beside it. B's ``upgrade --all`` brings the fleet to N+1 while A keeps
   creating projects at N (a release creates projects at its own head: A's new projects are at N until B's
   next ``upgrade --all``, or B's first ``ensure`` of them, and A keeps using the projects B upgraded, which
   it ensured before); both claim spares of their own release, and both fill the pool;
3. *rollback*: B is stopped (process and cron) for longer than ``workspace_pool_grace``, A goes on: B's
   spares are ahead of A, which never drops them;
4. *redeploy*: B again (a new process), A retired (process and cron), for longer than the grace: B's fills
   drop A's spares, now at a head nobody runs.

Then B's ``upgrade --all``, ``pool fill``, ``check``, ``status`` and ``pool status`` run once more, and
the invariants (``Outcome.violations``: each broken one in a line) are checked: every write an application
logged as committed is in its project (unless the project was dropped); every project that exists is one
an application created and did not drop (or a shared one), registered, at B's head, with its version table;
every project an application dropped is gone, schema and row; ``check`` is clean; only B's spares are left
(or A's while A filled the pool within the grace); every spare whose row was deleted was claimed by its own
release's application or dropped by a fill of another release that knows its revision, after the grace
(a trigger records each deletion: ``AUDIT``); no command printed a traceback or an ``Error:`` line, every
``--json`` output parses, every command exited 0 (``check`` 1 only for schemas at the other release's
head, by design, during the rolling deploy), ``upgrade`` reported ``gone`` only projects the
applications dropped; the applications saw no error other than ``WorkspaceNotFound`` on a project they were
dropping themselves, and logged no warning.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from support.chains import ChainBuilder, with_options
from support.cli import CLI
from support.db import assert_consistent

from migrations.models import CodeFile, Repository
from workspace_tool import WorkspaceError, WorkspaceManager
from workspace_tool.chain import Chain
from workspace_tool.drift import MOVED
from workspace_tool.naming import schema_for

HERE = Path(__file__).resolve()


@dataclass(frozen=True)
class Settings:
    seconds: float = 30.0  # the four phases together
    # the share of them each phase takes (the rollback and the redeploy must outlast grace_s)
    solo: float = 0.15
    rolling: float = 0.3
    rollback: float = 0.25
    redeploy: float = 0.3
    threads: int = 3  # application threads per release
    rate: float = 5.0  # operations a second per thread
    pool_size: int = 4  # workspace_pool_size of both releases
    grace_s: float = 4.0  # workspace_pool_grace of both releases
    shared: int = 8  # projects both releases use, made at A's head beforehand, never dropped
    jobs: int = 2  # --jobs of check and of the final upgrade
    upgrade_jobs: int = 1  # --jobs of `upgrade --all` beside the applications (slow: a wider window to drop in)
    fill_pause_s: float = 1.0  # between two `pool fill` of a release (its cron)
    command_pause_s: float = 0.3  # between two other fleet commands of a release
    seed: int = 18

    def phases(self) -> dict[str, float]:
        return {"solo": self.solo, "rolling": self.rolling, "rollback": self.rollback, "redeploy": self.redeploy}


# ------------------------------------------------------------------------------------ the releases
NOTE_REVISION = "0005_release_note"
NOTE_UP = """
op.add_column("repositories", sa.Column("release_note", sa.Text(), nullable=True))
op.create_index("ix_repositories_release_note", "repositories", ["release_note"])
"""
NOTE_DOWN = """
op.drop_index("ix_repositories_release_note", table_name="repositories")
op.drop_column("repositories", "release_note")
"""


@dataclass(frozen=True)
class Release:
    name: str  # "A" (head N) or "B" (head N+1)
    ini: Path
    head: str
    fingerprint: str
    revisions: tuple[str, ...]


def make_releases(workdir: Path, settings: Settings) -> tuple[Release, Release]:
    """Release A: a copy of the example chain; release B: the same and NOTE_REVISION. Both with the pool on."""
    options = {"workspace_pool_size": str(settings.pool_size), "workspace_pool_grace": str(settings.grace_s)}
    a = ChainBuilder(workdir / "release-a").copy_main_chain()
    b = ChainBuilder(workdir / "release-b").copy_main_chain().add(NOTE_REVISION, NOTE_UP, NOTE_DOWN)
    releases = []
    for name, builder in (("A", a), ("B", b)):
        chain = Chain.load(with_options(builder.ini, **options))
        releases.append(Release(name, builder.ini, chain.head, chain.fingerprint, tuple(chain.revisions)))
    return releases[0], releases[1]


# ------------------------------------------------------------------------------- the application
class Projects:
    """The projects an application process uses, shared by its threads: the shared ones and its own.
    A drop takes a project out of use first, then waits for the operations still *entering* it (ensuring
    it: they could create it again once the drop forgot it), but not for those already in it: they race
    the drop, as in a real service, and may see the project vanish (WorkspaceNotFound)."""

    def __init__(self, shared: list[str]) -> None:
        self._changed = threading.Condition()
        self.shared = list(shared)
        self.own: list[str] = []
        self.entering: Counter[str] = Counter()
        self.doomed: set[str] = set()  # being dropped, or dropped

    def pick(self, rng: random.Random) -> str | None:
        """A project to use (mostly its own, once it has some); the caller calls ``entered`` once in it."""
        with self._changed:
            choices = self.own if self.own and rng.random() < 0.7 else self.shared
            if not choices:
                return None
            project_id = rng.choice(choices)
            self.entering[project_id] += 1
            return project_id

    def entered(self, project_id: str) -> None:
        with self._changed:
            self.entering[project_id] -= 1
            if self.entering[project_id] <= 0:
                del self.entering[project_id]
                self._changed.notify_all()

    def add(self, project_id: str) -> None:
        with self._changed:
            self.own.append(project_id)

    def start_drop(self, rng: random.Random, keep: int = 3) -> str | None:
        """One of its own projects, taken out of use, once nothing is entering it (None: too few)."""
        with self._changed:
            if len(self.own) <= keep:
                return None
            project_id = self.own.pop(rng.randrange(len(self.own)))
            self.doomed.add(project_id)
            while self.entering[project_id] > 0:
                self._changed.wait()
            return project_id

    def drop_failed(self, project_id: str) -> None:
        with self._changed:
            self.doomed.discard(project_id)
            self.own.append(project_id)

    def is_doomed(self, project_id: str) -> bool:
        with self._changed:
            return project_id in self.doomed


class App:
    """One release's application process: ``threads`` threads doing ``rate`` operations a second each
    (create 20%, write 40%, read 30%, drop 10%) until stopped; everything it did, and every error it saw,
    kept for ``report``."""

    def __init__(
        self, mgr: WorkspaceManager, release: str, tag: str, shared: list[str], threads: int, rate: float
    ) -> None:
        self.mgr = mgr
        self.release = release
        self.tag = tag  # its new projects' ids start with it
        self.threads = threads
        self.interval = 1.0 / rate
        self.projects = Projects(shared)
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._sequence = 0
        self.counts: Counter[str] = Counter()
        self.created: list[dict[str, Any]] = []
        self.dropped: list[str] = []
        self.writes: dict[str, list[str]] = defaultdict(list)  # project -> markers committed
        self.uncertain: list[str] = []  # markers of writes that raised: committed or not
        self.errors: list[dict[str, Any]] = []
        self.problems: list[str] = []  # what the application itself found wrong
        self.lag_s = 0.0  # the furthest a thread fell behind its schedule
        # release B writes the column its revision added (and release A, which doesn't know it, never does)
        self.insert = sa.text(
            "INSERT INTO repositories (path, name, release_note) VALUES (:path, :name, :name) RETURNING id"
            if mgr.head == NOTE_REVISION
            else "INSERT INTO repositories (path, name) VALUES (:path, :name) RETURNING id"
        )

    def _next(self) -> int:
        with self._lock:
            self._sequence += 1
            return self._sequence

    # ---------------------------------------------------------------------------- operations
    def create(self, rng: random.Random) -> None:
        project_id = f"{self.tag}-{self._next()}"
        try:
            result = self.mgr.ensure_detailed(project_id)
        except Exception as exc:
            self._failed("create", project_id, exc)
            return
        with self._lock:
            self.counts["creates"] += 1
            self.counts[f"created via {result.path}"] += 1
            self.created.append({"project_id": project_id, "path": str(result.path), "to": result.to_revision})
        if str(result.action) != "created" or result.to_revision != self.mgr.head:
            self._problem(f"ensure {project_id}: {result.action} to {result.to_revision}, not created at head")
        self.projects.add(project_id)

    def write(self, rng: random.Random) -> None:
        project_id = self.projects.pick(rng)
        if project_id is None:
            return
        marker = f"/{project_id}/{self.tag}-{self._next()}"
        with self._entering(project_id) as entered:
            try:
                if rng.random() < 0.5:
                    with self.mgr.session(project_id) as session:
                        entered()
                        repository = Repository(path=marker, name=self.release)
                        session.add(CodeFile(repository=repository, path=f"{marker}/main.py", relative_path="main.py"))
                        session.commit()
                else:
                    with self.mgr.connect(project_id) as conn:
                        entered()
                        repository_id = conn.execute(self.insert, {"path": marker, "name": self.release}).scalar_one()
                        conn.execute(
                            sa.text(
                                "INSERT INTO code_files (repository_id, path, relative_path) VALUES (:r, :p, 'main.py')"
                            ),
                            {"r": repository_id, "p": f"{marker}/main.py"},
                        )
                        conn.commit()
            except Exception as exc:
                self._failed("write", project_id, exc)
                with self._lock:
                    self.uncertain.append(marker)
                return
        with self._lock:
            self.writes[project_id].append(marker)
            self.counts["writes"] += 1

    def read(self, rng: random.Random) -> None:
        project_id = self.projects.pick(rng)
        if project_id is None:
            return
        with self._lock:
            expected = set(self.writes.get(project_id, ()))
        files_sql = sa.text("SELECT r.path FROM code_files f JOIN repositories r ON r.id = f.repository_id")
        with self._entering(project_id) as entered:
            try:
                if rng.random() < 0.5:
                    with self.mgr.session(project_id) as session:
                        entered()
                        paths = set(session.scalars(sa.select(Repository.path)))
                        files = set(session.execute(files_sql).scalars())
                else:
                    with self.mgr.connect(project_id) as conn:
                        entered()
                        paths = set(conn.execute(sa.text("SELECT path FROM repositories")).scalars())
                        files = set(conn.execute(files_sql).scalars())
            except Exception as exc:
                self._failed("read", project_id, exc)
                return
        with self._lock:
            self.counts["reads"] += 1
        foreign = sorted(p for p in paths | files if not p.startswith(f"/{project_id}/"))
        if foreign:
            self._problem(f"a read of {project_id} saw rows of other projects: {foreign[:3]}")
        if missed := (expected - paths) | (expected - files):
            self._problem(f"a read of {project_id} missed committed writes: {sorted(missed)[:3]}")

    def drop(self, rng: random.Random) -> None:
        project_id = self.projects.start_drop(rng)
        if project_id is None:
            return
        try:
            existed = self.mgr.drop(project_id)
        except Exception as exc:
            self._failed("drop", project_id, exc)
            self.projects.drop_failed(project_id)
            return
        if not existed:
            self._problem(f"drop {project_id}: it did not exist")
        with self._lock:
            self.dropped.append(project_id)
            self.counts["drops"] += 1

    # ---------------------------------------------------------------------------------- helpers
    class _Entering:
        def __init__(self, projects: Projects, project_id: str) -> None:
            self.projects, self.project_id, self.done = projects, project_id, False

        def __call__(self) -> None:
            if not self.done:
                self.done = True
                self.projects.entered(self.project_id)

        def __enter__(self) -> App._Entering:
            return self

        def __exit__(self, *exc: object) -> None:
            self()

    def _entering(self, project_id: str) -> App._Entering:
        """``with self._entering(p) as entered:``, ``entered()`` once in the project (or at the end)."""
        return App._Entering(self.projects, project_id)

    def _failed(self, operation: str, project_id: str, exc: Exception) -> None:
        error = {
            "operation": operation,
            "project_id": project_id,
            "kind": type(exc).__name__,
            "error": f"{type(exc).__name__}: {exc}",
            "dropping": self.projects.is_doomed(project_id),  # this process was dropping it
            "traceback": None if isinstance(exc, WorkspaceError) else traceback.format_exc(),
        }
        with self._lock:
            self.errors.append(error)

    def _problem(self, what: str) -> None:
        with self._lock:
            self.problems.append(what)

    # -------------------------------------------------------------------------------------- run
    def work(self, n: int, seed: int) -> None:
        rng = random.Random(seed * 1000 + n)
        operations: list[Callable[[random.Random], None]] = [self.create, self.write, self.read, self.drop]
        weights = [20, 40, 30, 10]
        next_at = time.monotonic()
        while not self.stop.is_set():
            operation = rng.choices(operations, weights)[0]
            try:
                operation(rng)
            except Exception as exc:  # a bug of this driver: reported, the thread goes on
                self._failed(operation.__name__, "", exc)
            next_at += self.interval
            late = time.monotonic() - next_at
            with self._lock:
                self.lag_s = max(self.lag_s, late)
            if late < 0:
                self.stop.wait(-late)
            elif late > 1.0:  # far behind (the machine is busy): the schedule starts again from now
                next_at = time.monotonic()

    def report(self, started: float, stopped: float) -> dict[str, Any]:
        return {
            "release": self.release,
            "head": self.mgr.head,
            "seconds": stopped - started,
            "counts": dict(self.counts),
            "created": self.created,
            "dropped": self.dropped,
            "writes": dict(self.writes),
            "uncertain": self.uncertain,
            "errors": self.errors,
            "problems": self.problems,
            "lag_s": self.lag_s,
        }


def app_main(argv: list[str]) -> int:
    """``python tests/soak.py app ...``: one release's application process (see ``App``)."""
    parser = argparse.ArgumentParser(prog="soak.py app")
    parser.add_argument("--url", required=True)
    parser.add_argument("--ini", required=True)
    parser.add_argument("--release", required=True)
    parser.add_argument("--tag", required=True, help="what its new projects' ids start with")
    parser.add_argument("--shared", default="")
    parser.add_argument("--warm", action="store_true", help="ensure the shared projects before starting")
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--stop", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    engine = sa.create_engine(args.url, pool_size=args.threads + 3, max_overflow=args.threads)
    mgr = WorkspaceManager(engine, args.ini, refill=True)
    shared = [p for p in args.shared.split(",") if p]
    if args.warm:  # it knows them at its head before the other release upgrades them (its cache)
        for project_id in shared:
            mgr.ensure(project_id)
    app = App(mgr, args.release, args.tag, shared, args.threads, args.rate)
    threads = [threading.Thread(target=app.work, args=(n, args.seed), daemon=True) for n in range(args.threads)]
    args.ready.touch()
    started = time.time()
    for thread in threads:
        thread.start()
    while not args.stop.exists():
        time.sleep(0.05)
    app.stop.set()
    for thread in threads:
        thread.join(120)
    stopped = time.time()
    mgr.close()  # the background refill stops after the spare it is building
    engine.dispose()
    args.out.write_text(json.dumps(app.report(started, stopped)))
    return 0


# ----------------------------------------------------------------------- the fleet commands beside it
@dataclass
class CommandRun:
    release: str
    phase: str
    args: list[str]
    started: float
    seconds: float
    exit_code: int
    stdout: str
    stderr: str

    @property
    def name(self) -> str:
        """``upgrade``, ``status``, ``check``, ``pool fill``, ``pool status``."""
        return " ".join(self.args[:2]) if self.args[0] == "pool" else self.args[0]

    def json(self) -> Any:
        return json.loads(self.stdout)


class CommandLoop(threading.Thread):
    """A release's commands, one after the other with a pause, each as a process, until stopped; the
    commands of each round are ``commands(phase)``."""

    def __init__(self, soak: Soak, release: Release, commands: Callable[[str], list[list[str]]], pause: float) -> None:
        super().__init__(daemon=True)
        self.soak, self.release, self.commands, self.pause = soak, release, commands, pause
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for args in self.commands(self.soak.phase):
                if self.stop.is_set():
                    return
                self.soak.command(self.release, args)
                self.stop.wait(self.pause)

    def finish(self) -> None:
        """Once stopped (``stop`` set: no command starts), after the command under way."""
        self.stop.set()
        self.join(300)


# ----------------------------------------------------------------------------- the pool's deletions
# Every deletion of a spare's row: claimed (renamed into a project's schema by claim_spare or claim_project, in the
# application's process), or dropped by a fill (TAKE: `pool fill`, the background refill, `upgrade --all`),
# with when its release last filled the pool, and who did it (application_name: soak-<release>-<what>).
AUDIT = """
CREATE SCHEMA soak_audit;
CREATE TABLE soak_audit.spare_deletions (
    schema_name text, chain text, revision text, ready boolean, deleted_at timestamptz,
    release_last_seen timestamptz, schema_present boolean, application text, statement text);
CREATE FUNCTION soak_audit.record() RETURNS trigger LANGUAGE plpgsql AS $audit$
BEGIN
    INSERT INTO soak_audit.spare_deletions VALUES (
        OLD.schema_name, OLD.chain, OLD.revision, OLD.ready, now(),
        (SELECT r.last_seen FROM project_registry.pool_releases r
         WHERE r.chain = OLD.chain AND r.revision = OLD.revision),
        EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = OLD.schema_name::name),
        current_setting('application_name'), left(current_query(), 300));
    RETURN OLD;
END
$audit$;
CREATE TRIGGER soak_audit AFTER DELETE ON project_registry.spare_schemas
    FOR EACH ROW EXECUTE FUNCTION soak_audit.record();
"""
UNAUDIT = (
    "DROP TRIGGER IF EXISTS soak_audit ON project_registry.spare_schemas; DROP SCHEMA IF EXISTS soak_audit CASCADE"
)
TAKE_STATEMENT = "DELETE FROM project_registry.spare_schemas WHERE schema_name IN ("


# ------------------------------------------------------------------------------------------ the run
@dataclass
class Outcome:
    violations: list[str]
    figures: dict[str, Any]
    report: str


FILL = ["pool", "fill", "--json"]
POOL_STATUS = ["pool", "status", "--json"]
# At the end of the rollback: release B's spares (still there: A never drops them) and when B last filled.
ROLLBACK_END = sa.text(
    "SELECT (SELECT count(*) FROM project_registry.spare_schemas WHERE chain = :chain AND revision = :revision) "
    "AS spares, (SELECT extract(epoch FROM last_seen)::float8 FROM project_registry.pool_releases "
    "WHERE chain = :chain AND revision = :revision) AS last_filled"
)


@dataclass(frozen=True)
class AppProcess:
    key: str  # A, B1, B2
    process: subprocess.Popen[str]
    stop: Path
    out: Path


@dataclass
class Soak:
    url: str
    workdir: Path
    settings: Settings
    echo: Callable[[str], None] = lambda line: None
    phase: str = "setup"
    runs: list[CommandRun] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # phase -> when it started (time.time())
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)  # process key -> its report
    app_errors: dict[str, str] = field(default_factory=dict)  # process key -> its exit and stderr, if not clean
    rollback_end: Any = None  # ROLLBACK_END's row

    def command(self, release: Release, args: list[str]) -> CommandRun:
        """``workspace-tool ARGS`` of ``release`` as a process (application_name soak-<release>-<command>)."""
        name = "-".join(args[:2] if args[0] == "pool" else args[:1])
        env = {**os.environ, "PGAPPNAME": f"soak-{release.name}-{name}"}
        argv = [*CLI, "--database-url", self.url, "-c", str(release.ini), *args]
        phase, started = self.phase, time.time()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
            code, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            out, err = (x.decode() if isinstance(x, bytes) else x or "" for x in (exc.stdout, exc.stderr))
            code, stdout, stderr = -1, out, f"timed out after 600 s: {err}"
        run = CommandRun(release.name, phase, args, started, time.time() - started, code, stdout, stderr)
        self.runs.append(run)
        return run

    def start_app(self, release: Release, key: str, shared: list[str], *, warm: bool = False) -> AppProcess:
        """Release ``release``'s application process ``key`` (its project ids start with it), once ready."""
        files = {k: self.workdir / f"app-{key}.{k}" for k in ("ready", "stop", "out")}
        argv = [sys.executable, str(HERE), "app", "--url", self.url, "--ini", str(release.ini), "--release"]
        argv += [
            release.name,
            "--tag",
            key.lower(),
            "--shared",
            ",".join(shared),
            "--threads",
            str(self.settings.threads),
        ]
        argv += ["--rate", str(self.settings.rate), "--seed", str(self.settings.seed + sum(map(ord, key)))]
        argv += [f"--{k}={v}" for k, v in files.items()] + (["--warm"] if warm else [])
        # the repository's root on the path: this script imports the example chain's models (migrations/)
        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PGAPPNAME": f"soak-{release.name}-app", "PYTHONPATH": path}
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 120
        while not files["ready"].exists():
            if process.poll() is not None or time.monotonic() > deadline:
                _, err = process.communicate(timeout=60)
                raise RuntimeError(f"application {key} did not start (exit {process.returncode}): {err}")
            time.sleep(0.02)
        return AppProcess(key, process, files["stop"], files["out"])

    def collect(self, app: AppProcess) -> None:
        """Stop it (its threads finish the operation under way, its background refill the spare it builds),
        then keep its report and what it printed."""
        app.stop.touch()
        _, stderr = app.process.communicate(timeout=300)
        if app.process.returncode != 0 or stderr.strip():
            self.app_errors[app.key] = f"exit {app.process.returncode}: {stderr.strip()}"
        self.apps[app.key] = json.loads(app.out.read_text()) if app.out.exists() else {}

    def loops(self, release: Release) -> list[CommandLoop]:
        """Started: the release's cron (`pool fill`) and its other fleet commands, in turn; `upgrade --all`
        only while it is the newest release running (release A: while alone)."""
        jobs = ["--jobs", str(self.settings.jobs)]

        def fleet(phase: str) -> list[list[str]]:
            upgrade = release.name == "B" or phase == "solo"
            return [
                *([["upgrade", "--all", "--json", "--jobs", str(self.settings.upgrade_jobs)]] if upgrade else []),
                ["status", "--json"],
                ["check", "--json", *jobs],
                POOL_STATUS,
            ]

        loops = [
            CommandLoop(self, release, lambda phase: [FILL], self.settings.fill_pause_s),
            CommandLoop(self, release, fleet, self.settings.command_pause_s),
        ]
        for loop in loops:
            loop.start()
        return loops

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.phases[phase] = time.time()
        self.echo(f"soak: {phase}")


def run(url: str, workdir: Path, settings: Settings, echo: Callable[[str], None] = lambda line: None) -> Outcome:
    """The soak on the database at ``url`` (its project schemas, registry and spares are the soak's): the
    four phases, the final commands, then the invariants. Working files go to ``workdir``."""
    soak = Soak(url, workdir, settings, echo)
    a, b = make_releases(workdir, settings)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    shared = [f"s-{i}" for i in range(1, settings.shared + 1)]
    try:
        seeds = seed_shared(engine, a, shared)
        with engine.begin() as conn:
            conn.exec_driver_sql(AUDIT)
        seconds = {p: settings.seconds * share for p, share in settings.phases().items()}

        soak.enter("solo")
        app_a = soak.start_app(a, "A", shared, warm=True)  # it knows them at its head before B upgrades them
        loops_a = soak.loops(a)
        time.sleep(seconds["solo"])

        soak.enter("rolling")
        app_b = soak.start_app(b, "B1", shared)
        loops_b = soak.loops(b)
        time.sleep(seconds["rolling"])

        soak.enter("rollback")  # release B is stopped, A goes on: B's spares are ahead of A, and kept
        retire(soak, b, app_b, loops_b)
        time.sleep(seconds["rollback"])
        with engine.connect() as conn:
            soak.rollback_end = conn.execute(ROLLBACK_END, {"chain": b.fingerprint, "revision": b.head}).one()

        soak.enter("redeploy")  # release B again (a new process), A retired: A's spares are at a head nobody runs
        retire(soak, a, app_a, loops_a)
        app_b = soak.start_app(b, "B2", shared)
        loops_b = soak.loops(b)
        time.sleep(seconds["redeploy"])

        soak.enter("stopping")
        soak.collect(app_b)
        for loop in [*stop(loops_a), *stop(loops_b)]:
            loop.finish()

        soak.enter("final")
        soak.command(b, ["upgrade", "--all", "--json", "--jobs", str(settings.jobs)])
        with engine.connect() as conn:
            before_fill = conn.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
        for args in (FILL, ["check", "--json", "--jobs", str(settings.jobs)], ["status", "--json"], POOL_STATUS):
            soak.command(b, args)
        soak.enter("checking")
        return judge(soak, engine, (a, b), shared, seeds, before_fill)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(UNAUDIT)
        engine.dispose()


def retire(soak: Soak, release: Release, app: AppProcess, loops: list[CommandLoop]) -> None:
    """A release stopped: no more commands of it (the ones under way finish meanwhile), its application,
    then its cron's last `pool fill` (so that it leaves a full pool of its spares behind, whatever its
    application's last claims took)."""
    stop(loops)
    soak.collect(app)
    soak.command(release, FILL)


def stop(loops: list[CommandLoop]) -> list[CommandLoop]:
    """No more commands from these (the ones under way finish)."""
    for loop in loops:
        loop.stop.set()
    return loops


def seed_shared(engine: sa.Engine, release: Release, shared: list[str]) -> dict[str, list[str]]:
    """The shared projects, made at ``release``'s head, with two rows each; returns their markers."""
    setup = WorkspaceManager(engine, release.ini, warm_pool=0)
    seeds: dict[str, list[str]] = {}
    for project_id in shared:
        with setup.connect(project_id) as conn:
            seeds[project_id] = [f"/{project_id}/seed{i}" for i in range(2)]
            for marker in seeds[project_id]:
                repository_id = conn.execute(
                    sa.text("INSERT INTO repositories (path, name) VALUES (:p, 'seed') RETURNING id"), {"p": marker}
                ).scalar_one()
                conn.execute(
                    sa.text("INSERT INTO code_files (repository_id, path, relative_path) VALUES (:r, :p, 'main.py')"),
                    {"r": repository_id, "p": f"{marker}/main.py"},
                )
            conn.commit()
    setup.close()
    return seeds


# ------------------------------------------------------------------------------------ the invariants
def judge(
    soak: Soak,
    engine: sa.Engine,
    releases: tuple[Release, Release],
    shared: list[str],
    seeds: dict[str, list[str]],
    before_fill: Any,
) -> Outcome:
    a, b = releases
    by_name = {r.name: r for r in releases}
    apps = soak.apps
    violations: list[str] = []
    figures: dict[str, Any] = {"settings": asdict(soak.settings), "phases": _phase_seconds(soak)}

    # -- the applications
    dropped = {p for app in apps.values() for p in app.get("dropped", [])}
    for name, error in soak.app_errors.items():
        violations.append(f"application {name}: {error}")
    for name, app in apps.items():
        if not app:
            violations.append(f"application {name} wrote no report")
            continue
        violations += [f"application {name}: {p}" for p in app["problems"]]
        for error in app["errors"]:
            if not (error["kind"] == "WorkspaceNotFound" and error["dropping"]):
                violations.append(
                    f"application {name}: {error['operation']} {error['project_id']}: {error['error']}"
                    + (f"\n{error['traceback']}" if error["traceback"] else "")
                )
        heads = Counter(c["to"] for c in app["created"])
        if set(heads) - {by_name[app["release"]].head}:
            violations.append(f"application {name} created projects at {dict(heads)}, not at its head")

    # -- the commands
    gone: set[str] = set()
    for run in soak.runs:
        release = by_name[run.release]
        other = b if release is a else a
        violations += [
            f"{run.release} `{' '.join(run.args)}` ({run.phase}): {v}" for v in judge_command(run, release, other)
        ]
        if run.name == "upgrade" and run.exit_code == 0 and run.stdout.startswith("{"):
            gone |= {r["project_id"] for r in run.json()["results"] if r["status"] == "gone"}
    if gone - dropped:
        violations.append(f"`upgrade` reported gone projects no application dropped: {sorted(gone - dropped)}")

    # -- the pool's deletions
    audit, audit_figures = judge_audit(engine, releases, soak.settings.grace_s)
    violations += audit

    # -- the database
    violations += judge_database(engine, releases, shared, seeds, apps, soak.settings, before_fill)

    figures.update(_figures(soak, apps, audit_figures, gone))
    # the rollback: release B's spares past its grace while A filled the pool (the rule A keeps them by)
    spares, last_filled = soak.rollback_end
    after_grace = [
        r
        for r in soak.runs
        if r.release == "A" and r.name == "pool fill" and r.started > (last_filled or 0) + soak.settings.grace_s
    ]
    figures["rollback"] = {"B's spares kept": spares, "A's fills after B's grace": len(after_grace)}
    figures["violations"] = len(violations)
    return Outcome(violations, figures, describe(figures))


def judge_command(run: CommandRun, release: Release, other: Release) -> list[str]:
    """What is wrong with one command's run (empty: nothing). ``other``: the other release."""
    found = []
    if "Traceback" in run.stdout + run.stderr:
        found.append(f"a traceback: {run.stderr[-2000:]}")
    found += [f"printed {line!r}" for line in run.stderr.splitlines() if line.startswith(("Error", "Warning"))]
    allowed = {0, 1} if run.name == "check" else {0}
    if run.exit_code not in allowed:
        return [*found, f"exit {run.exit_code}: {run.stderr[-1000:]}"]
    try:
        report = run.json()
    except ValueError:
        return [*found, f"its output is not JSON: {run.stdout[:300]!r}"]
    final = run.phase == "final"
    if run.name == "upgrade":
        statuses: Counter[str] = Counter(r["status"] for r in report["results"])
        if set(statuses) - {"ok", "skipped", "gone"} or not report["ok"]:
            found.append(f"results {dict(statuses)}: {[r['error'] for r in report['results'] if r['error']][:3]}")
        if any(r["status"] == "ok" and r["to_revision"] != release.head for r in report["results"]):
            found.append("a schema upgraded to another revision than the head")
        if final and statuses["gone"]:
            found.append("projects gone while no application ran")
    elif run.name == "status":
        states = {k for k, v in report["counts"].items() if v}
        expected = {"at-head"} if final or run.phase == "solo" else {"at-head", _their_state(release)}
        if states - expected:
            found.append(f"states {report['counts']}")
        if report["missing"] or report["orphans"] or report["failed"]:
            found.append(f"missing {report['missing']}, orphans {report['orphans']}, failed {report['failed']}")
        for row in report["revisions"]:
            if row["state"] != "at-head" and row["revision"] != other.head:
                found.append(f"{row['schemas']} schema(s) {row['state']} at {row['revision']}")
    elif run.name == "check":
        # at the other release's head: as read, or migrated there by its `upgrade` while check ran
        theirs = f"at revision {other.head}, head is {release.head}"
        expected_problems = ([theirs], [f"{theirs} ({MOVED})"])
        for schema in report["schemas"] + report["spares"]:
            if schema["problems"] and (final or schema["problems"] not in expected_problems):
                found.append(f"{schema['schema']} ({schema['state']}): {schema['problems']}")
        if (run.exit_code == 0) != report["ok"]:
            found.append(f"exit {run.exit_code} with ok {report['ok']}")
    elif run.name == "pool fill":
        if report["busy"]:  # the CLI waits for another filler
            found.append(f"report {report}")
        if release.name == "A" and report["dropped"]:
            found.append(f"release A dropped {report['dropped']} spare(s): none is ever one it may drop")
        # (more is fine: `upgrade --all` keeps at least as many spares as there were, stale ones included)
        if final and report["ready"] < report["target"]:
            found.append(f"{report['ready']} ready after the final fill, fewer than {report['target']}")
    elif run.name == "pool status":
        spares = Counter(s["state"] for s in report["spares"])
        # the other release's spares: kept for it while it fills within the grace ("other release"), then
        # "ahead" of A (never dropped by it) and "stale" for B (its next fill drops them)
        allowed_states = {"ready", "other release", "ahead" if release.name == "A" else "stale"}
        if set(spares) - allowed_states:
            found.append(f"spares {dict(spares)}")
        if {k: v for k, v in report["counts"].items() if v} != dict(spares):
            found.append(f"counts {report['counts']} but spares {dict(spares)}: not one statement")
    return found


def _their_state(release: Release) -> str:
    """How a release's `status` shows the projects at the other release's head during the rolling deploy."""
    return "ahead" if release.name == "A" else "behind"


def judge_audit(
    engine: sa.Engine, releases: tuple[Release, Release], grace_s: float
) -> tuple[list[str], dict[str, int]]:
    """Every spare whose row was deleted: claimed by an application of its own release (ready), or dropped
    by another release that knows its revision, when its release had not filled the pool for the grace."""
    by_key = {(r.fingerprint, r.head): r for r in releases}
    by_name = {r.name: r for r in releases}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT schema_name, chain, revision, ready, application, statement, schema_present, "
                "deleted_at - release_last_seen < make_interval(secs => :grace) AS within_grace "
                "FROM soak_audit.spare_deletions ORDER BY deleted_at"
            ),
            {"grace": grace_s},
        ).all()
    violations = []
    counts: Counter[str] = Counter()
    for row in rows:
        owner = by_key.get((row.chain, row.revision))
        by = by_name.get(row.application.split("-")[1]) if row.application.startswith("soak-") else None
        what = f"spare {row.schema_name} of {owner.name if owner else (row.chain, row.revision)}"
        if owner is None or by is None:
            violations.append(f"{what} deleted by {row.application!r}: an unknown release")
            continue
        if "claim_spare" in row.statement or "claim_project" in row.statement:
            counts[f"{owner.name}'s claimed by {by.name}"] += 1
            if by is not owner or not row.ready or not row.application.endswith("-app"):
                violations.append(f"{what} (ready {row.ready}) claimed by {row.application}")
        elif row.statement.startswith(TAKE_STATEMENT) and row.schema_present:
            counts[f"{owner.name}'s dropped by {by.name}"] += 1
            if by is owner:
                violations.append(f"{what} dropped by its own release ({row.application}): it was ready at its head")
            elif owner.head not in by.revisions:
                violations.append(f"{what} dropped by {row.application}, which doesn't know its revision (ahead)")
            elif row.within_grace:
                violations.append(f"{what} dropped by {row.application} while its release filled within the grace")
        else:
            violations.append(f"{what} deleted by {row.application}, neither a claim nor a fill: {row.statement!r}")
    return violations, dict(counts)


def judge_database(
    engine: sa.Engine,
    releases: tuple[Release, Release],
    shared: list[str],
    seeds: dict[str, list[str]],
    apps: dict[str, dict[str, Any]],
    settings: Settings,
    before_fill: Any,
) -> list[str]:
    a, b = releases
    violations = []
    expected = set(shared)
    logged: dict[str, set[str]] = {p: set(m) for p, m in seeds.items()}
    uncertain: set[str] = set()
    for app in apps.values():
        expected |= {c["project_id"] for c in app.get("created", [])} - set(app.get("dropped", []))
        for project_id, markers in app.get("writes", {}).items():
            logged.setdefault(project_id, set()).update(markers)
        uncertain |= set(app.get("uncertain", []))
    try:
        versions = assert_consistent(engine)  # schemas <-> registry rows, and their versions
    except AssertionError as exc:
        return [f"the registry and the schemas disagree: {exc}"]
    schemas = {schema_for(p): p for p in expected}
    if set(versions) != set(schemas):
        violations.append(
            f"projects lost: {sorted(schemas.keys() - versions.keys())[:10]}; projects no application has: "
            f"{sorted(versions.keys() - schemas.keys())[:10]}"
        )
    if set(versions.values()) - {b.head}:
        violations.append(f"versions {dict(Counter(versions.values()))}, not all at {b.head}")
    with engine.connect() as conn:
        for schema in sorted(set(versions) & set(schemas)):
            project_id = schemas[schema]
            rows = conn.execute(
                sa.text(
                    f'SELECT r.path, count(f.id) FROM "{schema}".repositories r '
                    f'LEFT JOIN "{schema}".code_files f ON f.repository_id = r.id GROUP BY r.path'
                )
            ).all()
            found = {r[0]: r[1] for r in rows}
            mine = logged.get(project_id, set())
            if lost := mine - found.keys():
                violations.append(f"{project_id}: committed writes lost: {sorted(lost)[:5]}")
            if foreign := [p for p in found if not p.startswith(f"/{project_id}/")]:
                violations.append(f"{project_id}: rows of other projects: {foreign[:5]}")
            if unlogged := found.keys() - mine - uncertain:
                violations.append(f"{project_id}: rows nobody committed: {sorted(unlogged)[:5]}")
            if without := [p for p in mine & found.keys() if found[p] != 1]:
                violations.append(f"{project_id}: repositories without their one code file: {without[:5]}")
        spares = conn.execute(
            sa.text(
                "SELECT s.schema_name, s.chain, s.revision, s.ready, n.oid IS NOT NULL AS present, "
                "(SELECT r.last_seen FROM project_registry.pool_releases r WHERE r.chain = s.chain "
                " AND r.revision = s.revision) > CAST(:before AS timestamptz) - make_interval(secs => :grace) "
                "AS within_grace FROM project_registry.spare_schemas s "
                "LEFT JOIN pg_namespace n ON n.nspname = s.schema_name::name"
            ),
            {"before": before_fill, "grace": settings.grace_s},
        ).all()
        unlisted = conn.execute(
            sa.text(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'workspace\\_spare\\_%' AND nspname NOT IN "
                "(SELECT schema_name FROM project_registry.spare_schemas)"
            )
        ).scalars()
        violations += [f"spare schema {s} without its row (half-made)" for s in unlisted]
    for spare in spares:
        if not (spare.ready and spare.present):
            violations.append(f"spare {spare.schema_name}: ready {spare.ready}, schema present {spare.present}")
        if (spare.chain, spare.revision) == (b.fingerprint, b.head):
            continue
        if (spare.chain, spare.revision) == (a.fingerprint, a.head) and spare.within_grace:
            continue  # release A filled the pool within the grace of the final fill: kept for it
        violations.append(f"spare {spare.schema_name} at {spare.revision}, a head nobody runs, after the final fill")
    return violations


# ------------------------------------------------------------------------------------------ figures
def _phase_seconds(soak: Soak) -> dict[str, float]:
    marks = sorted(soak.phases.items(), key=lambda kv: kv[1])
    return {name: round(marks[i + 1][1] - start, 1) for i, (name, start) in enumerate(marks[:-1])}


def _figures(soak: Soak, apps: dict[str, dict[str, Any]], audit: dict[str, int], gone: set[str]) -> dict[str, Any]:
    figures: dict[str, Any] = {"applications": {}, "commands": {}, "pool deletions": audit, "gone": len(gone)}
    for name, app in apps.items():
        if not app:
            continue
        seconds = app["seconds"]
        counts = Counter(app["counts"])
        figures["applications"][name] = {
            "seconds": round(seconds, 1),
            "counts": dict(counts),
            "per second": {k: round(counts[k] / seconds, 2) for k in ("creates", "writes", "reads", "drops")},
            "errors": dict(Counter(f"{e['kind']}{' (dropping it)' if e['dropping'] else ''}" for e in app["errors"])),
            "lag_s": round(app["lag_s"], 2),
        }
    commands: dict[str, dict[str, Any]] = {}
    for run in soak.runs:
        entry = commands.setdefault(f"{run.release} {run.name}", {"runs": 0, "exit": Counter(), "seconds": 0.0})
        entry["runs"] += 1
        entry["exit"][run.exit_code] += 1
        entry["seconds"] += run.seconds
        if run.exit_code not in (0, 1):
            continue
        try:
            report = run.json()
        except ValueError:
            continue
        if run.name == "upgrade":
            for status, n in report["counts"].items():
                entry[status] = entry.get(status, 0) + n
            pool = report.get("pool") or {}
            entry["spares built"] = entry.get("spares built", 0) + pool.get("built", 0)
            entry["spares dropped"] = entry.get("spares dropped", 0) + pool.get("dropped", 0)
        elif run.name == "pool fill":
            for key in ("built", "dropped", "claimed"):
                entry[key] = entry.get(key, 0) + report[key]
        elif run.name == "check":
            entry["schemas behind or ahead"] = entry.get("schemas behind or ahead", 0) + report["failing"]
            moved = sum(1 for c in report["schemas"] for p in c["problems"] if p.endswith(f"({MOVED})"))
            entry["migrated while it ran"] = entry.get("migrated while it ran", 0) + moved
            entry["gone"] = entry.get("gone", 0) + report["gone"]
    for entry in commands.values():
        entry["exit"] = dict(entry["exit"])
        entry["mean seconds"] = round(entry.pop("seconds") / entry["runs"], 2)
    figures["commands"] = commands
    return figures


def describe(figures: dict[str, Any]) -> str:
    """The figures as a few lines of text."""
    lines = [f"phases (s): {figures['phases']}"]
    for name, app in figures["applications"].items():
        counts = app["counts"]
        lines.append(
            f"application {name}: {app['seconds']} s, per second {app['per second']}; created "
            f"{counts.get('creates', 0)} ({counts.get('created via pool', 0)} from the pool, "
            f"{counts.get('creates', 0) - counts.get('created via pool', 0)} built), dropped {counts.get('drops', 0)}, "
            f"{counts.get('writes', 0)} writes, {counts.get('reads', 0)} reads; errors {app['errors'] or 'none'}; "
            f"furthest behind schedule {app['lag_s']} s"
        )
    total: Counter[str] = Counter()
    for app in figures["applications"].values():
        total.update(app["counts"])
    seconds = sum(figures["phases"].get(p, 0.0) for p in ("solo", "rolling", "rollback", "redeploy"))
    lines.append(
        f"all applications, over {seconds:.0f} s: {total['creates']} created ({total['created via pool']} from the "
        f"pool), {total['drops']} dropped, {total['writes']} writes, {total['reads']} reads: per second "
        + ", ".join(f"{k} {total[k] / seconds:.2f}" for k in ("creates", "drops", "writes", "reads"))
    )
    for name, entry in figures["commands"].items():
        lines.append(f"{name}: {entry}")
    runs = sum(entry["runs"] for entry in figures["commands"].values())
    lines.append(f"fleet commands: {runs}")
    lines.append(f"pool deletions: {figures['pool deletions']}; `upgrade` gone: {figures['gone']}")
    lines.append(f"rollback: {figures['rollback']}")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["app"]:
        raise SystemExit(app_main(sys.argv[2:]))
    raise SystemExit("usage: soak.py app ... (the application process; the soak itself: soak.run())")
