"""A real PostgreSQL for the tests: `initdb` + `postgres` on a free 127.0.0.1 port in a folder of its own.

Debian's `postgresql` package (15) puts its binaries in /usr/lib/postgresql/<major>/bin; `.ci/run`
installs it and stops the packaged cluster. PostgreSQL refuses to run as root, so when the tests run as
root the server runs as the `postgres` system user the package creates, in a folder that user owns (a
pytest tmp_path is private to root). Trust authentication on the loopback only: the server is the test's.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port, wait_for_port


def _bin_dir() -> str:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True)
    if not candidates:
        import pytest

        pytest.skip("PostgreSQL is not installed (Debian package postgresql; .ci/run installs it)")
    return os.path.dirname(candidates[0])


def _as_user() -> list[str]:
    """The prefix that runs a command as the server's owner: nothing, or `runuser -u postgres --` as root."""
    if os.geteuid() != 0:
        return []
    pwd.getpwnam("postgres")  # KeyError: the package's user is missing
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class Postgres:
    """A PostgreSQL server the tests started; `stop()`/`start()` keep its data (an outage), `close()` ends
    it and removes its folder."""

    port: int
    datadir: Path
    bindir: str
    log_path: Path

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*_as_user(), f"{self.bindir}/pg_ctl", "-D", str(self.datadir), *args],
                              capture_output=True, text=True, check=False, timeout=timeout)

    def running(self) -> bool:
        return self._ctl("status").returncode == 0

    def start(self) -> None:
        """Start (again) on the same port with the same data; a no-op while it runs."""
        if self.running():
            return
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.datadir} "
                   "-c fsync=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=64MB")
        result = self._ctl("start", "-w", "-t", "60", "-l", str(self.log_path), "-o", options)
        if result.returncode != 0:
            raise RuntimeError(f"postgres did not start: {result.stderr}\n{self.log()}")
        wait_for_port(self.port, timeout=30)

    def stop(self) -> None:
        """A fast shutdown (connections cut, data kept), as an operator's restart or an outage."""
        if self.running():
            self._ctl("stop", "-w", "-m", "fast")

    def kill(self) -> None:
        """An immediate shutdown (as a crash: recovery at the next start)."""
        if self.running():
            self._ctl("stop", "-w", "-m", "immediate")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.datadir.parent, ignore_errors=True)

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database (`CREATE DATABASE <prefix>_<unique>`); its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with `psql` (unaligned, tuples only); raises on an error."""
        result = subprocess.run([f"{self.bindir}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                 "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
                                 "-c", sql], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip())
        return result.stdout.strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_postgres() -> Postgres:
    """initdb in a fresh folder owned by the server's user, then start it on a free port."""
    bindir = _bin_dir()
    prefix = _as_user()
    home = Path(tempfile.mkdtemp(prefix="ioc-pg-"))
    datadir = home / "data"
    if prefix:
        owner = pwd.getpwnam("postgres")
        os.chown(home, owner.pw_uid, owner.pw_gid)
    subprocess.run([*prefix, f"{bindir}/initdb", "-D", str(datadir), "-U", "postgres", "-A", "trust",
                    "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"], check=True, capture_output=True)
    server = Postgres(free_port(), datadir, bindir, home / "postgres.log")
    if prefix:
        owner = pwd.getpwnam("postgres")
        server.log_path.touch()
        os.chown(server.log_path, owner.pw_uid, owner.pw_gid)
    server.start()
    return server
