"""Fixtures of the reliability tests: the shared warm-start cache and one torch thread
(tests/conftest.py), and a real
PostgreSQL server on loopback for the ``db`` tests.

The server is started from Debian's binaries (``/usr/lib/postgresql/<ver>/bin``, installed by
``.ci/run`` and ``make test-db``) with a temporary data directory, trust authentication, TCP on
127.0.0.1 and a free port only, and is stopped afterwards. Postgres refuses to run as root, so
as root it runs as the ``postgres`` user the package creates. Without the binaries (or without
psycopg2) the ``db`` tests are skipped, except in CI (``CI`` set), where they fail instead.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module", autouse=True)
def _campaign_env(campaign_env: None) -> None:
    """Every reliability module runs with the shared cache and one thread."""


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}: .ci/run installs postgresql and the db extra")
    pytest.skip(reason)


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL of a fresh PostgreSQL server (database ``grape``) on 127.0.0.1."""
    bin_dir = _pg_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        _missing("PostgreSQL binaries (initdb, pg_ctl) are not installed")
    try:
        import psycopg2
    except ImportError:
        _missing("psycopg2 is not installed (pip install -e '.[db]')")
    root = Path(tempfile.mkdtemp(prefix="grape-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chmod(root, 0o755)
        os.chown(sockets, user.pw_uid, user.pw_gid)
        data.mkdir()
        os.chown(data, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    log = root / "sockets" / "server.log"

    def run(*args: str) -> None:
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            pytest.fail(f"{args[0]} failed: {proc.stdout}{proc.stderr}{server_log}")

    run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=200"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                con = psycopg2.connect(host="127.0.0.1", port=port, user="postgres")
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        con.autocommit = True
        con.cursor().execute("CREATE DATABASE grape")
        con.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/grape"
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)
