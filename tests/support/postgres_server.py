"""A throwaway REAL PostgreSQL server for tests (plain module: ``from tests.support.postgres_server import ...``).

``running_postgres(tmp_path)`` runs ``initdb`` + ``pg_ctl start`` on a free 127.0.0.1 port, yields the
connection parameters, and stops the server and deletes its data afterwards. Skips (pytest.skip) with the
reason when the binaries are missing or the server cannot be started as an unprivileged user.

Running as root (CI containers): ``initdb``/``postgres`` refuse to run as root, so every server command runs
as an unprivileged account (``postgres`` if it exists, which the Debian package creates, else ``nobody``)
via ``runuser`` (util-linux) or ``setpriv``. Its data directory is a fresh ``mkdtemp`` directory under the
system temp dir chowned to that account: pytest's ``tmp_path`` lives under a root-only 0700 directory that the
account cannot traverse. Unix sockets are disabled (TCP on loopback only), so no socket directory is needed.

Password auth (scram-sha-256) is on so that tests exercise the password path that production uses.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_PG_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql*/bin")
_START_ATTEMPTS = 3  # the free port may be taken between probing and binding


@dataclass(frozen=True)
class PostgresParams:
    host: str
    port: int
    user: str
    password: str
    dbname: str

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"

    def env(self) -> dict[str, str]:
        """The DAGSTER_PG_* variables deploy/dagster.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.dbname,
        }

    def postgres_db_config(self) -> dict[str, object]:
        """The ``postgres_db`` block of dagster-postgres storage config, with literal values.

        ``scheme`` names psycopg2: SQLAlchemy 2.1 maps a bare ``postgresql://`` URL to psycopg 3 (not installed).
        """
        return {
            "scheme": "postgresql+psycopg2",
            "hostname": self.host,
            "port": self.port,
            "username": self.user,
            "password": self.password,
            "db_name": self.dbname,
        }


def find_pg_bindir() -> Path | None:
    """Directory holding initdb, pg_ctl and postgres: PATH first, then Debian/Homebrew layouts (newest)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    candidates: list[Path] = []
    for pattern in _PG_BIN_GLOBS:
        candidates += [Path(p) for p in glob.glob(pattern)]

    def _version(p: Path) -> tuple[int, ...]:
        digits = "".join(c if c.isdigit() else " " for c in str(p)).split()
        return tuple(int(d) for d in digits)

    for bindir in sorted(candidates, key=_version, reverse=True):
        if all((bindir / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unprivileged_prefix() -> tuple[list[str], str | None]:
    """Command prefix that drops root, and the account it drops to; ([], None) when not root."""
    if os.geteuid() != 0:
        return [], None
    for account in ("postgres", "nobody"):
        try:
            pwd.getpwnam(account)
        except KeyError:
            continue
        if shutil.which("runuser"):
            return ["runuser", "-u", account, "--"], account
        if shutil.which("setpriv"):
            entry = pwd.getpwnam(account)
            return [
                "setpriv",
                f"--reuid={entry.pw_uid}",
                f"--regid={entry.pw_gid}",
                "--clear-groups",
            ], account
    pytest.skip("running as root but neither runuser nor setpriv, or no unprivileged account, is available")


def _run(cmd: list[str], *, what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")


@contextlib.contextmanager
def running_postgres(
    tmp_path: Path, *, user: str = "dagster", password: str = "test-password", dbname: str = "dagster"
) -> Iterator[PostgresParams]:
    """Start a real PostgreSQL server for the duration of the ``with`` block and yield its parameters.

    ``tmp_path`` holds the server log (kept for debugging); the data directory is a private temp dir
    removed afterwards. Tuned for tests (fsync off): never point it at data you care about.
    """
    bindir = find_pg_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries not found (initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin); "
            "install the `postgresql` package to run this test"
        )
    prefix, account = _unprivileged_prefix()

    base = Path(tempfile.mkdtemp(prefix="ad-pg-"))
    datadir = base / "data"
    pwfile = base / "pwfile"
    log_dir = Path(tmp_path)
    log_dir.mkdir(parents=True, exist_ok=True)
    logfile = base / "server.log"
    started = False
    try:
        pwfile.write_text(password + "\n")
        if account is not None:
            entry = pwd.getpwnam(account)
            os.chown(base, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        os.chmod(base, 0o700)
        os.chmod(pwfile, 0o600)

        _run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                user,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            what="initdb",
        )

        last_error: Exception | None = None
        port = 0
        for _ in range(_START_ATTEMPTS):
            port = _free_port()
            options = " ".join(
                [
                    f"-p {port}",
                    "-c listen_addresses=127.0.0.1",
                    "-c unix_socket_directories=''",
                    # Test data only: skip durability work to keep 1,000-partition inserts fast.
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=100",
                ]
            )
            try:
                _run(
                    [
                        *prefix,
                        str(bindir / "pg_ctl"),
                        "-D",
                        str(datadir),
                        "-l",
                        str(logfile),
                        "-o",
                        options,
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ],
                    what="pg_ctl start",
                )
            except RuntimeError as exc:  # port race or a real failure: retry, then report with the log
                last_error = exc
                continue
            started = True
            break
        if not started:
            log = logfile.read_text(errors="replace") if logfile.exists() else "(no server log)"
            raise RuntimeError(f"PostgreSQL did not start: {last_error}\n--- server log ---\n{log}")

        _create_database(PostgresParams("127.0.0.1", port, user, password, "postgres"), dbname)
        yield PostgresParams("127.0.0.1", port, user, password, dbname)
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run(
                    [*prefix, str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"],
                    what="pg_ctl stop",
                )
        if logfile.exists():
            with contextlib.suppress(OSError):
                shutil.copy(logfile, log_dir / "postgres-server.log")
        shutil.rmtree(base, ignore_errors=True)


def _create_database(admin: PostgresParams, dbname: str) -> None:
    if dbname == admin.dbname:
        return
    import psycopg2  # installed with dagster-postgres

    conn = psycopg2.connect(
        host=admin.host, port=admin.port, user=admin.user, password=admin.password, dbname=admin.dbname
    )
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        conn.close()
