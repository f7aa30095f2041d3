"""A throwaway MariaDB server of one test: its own datadir, socket and port under a temporary folder,
root without a password, started and killed by the test alone. The shared server (3306) is never
touched: a test that needs the database to die kills this one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pymysql

from tests.support import free_port

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"


class PrivateMariaDB:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mdb-"))
        self.datadir = self.root / "data"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def server_url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}"

    def install(self) -> None:
        subprocess.run(
            [
                INSTALL_DB,
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )

    def start(self, timeout_s: float = 60.0) -> float:
        """Start on the datadir (crash recovery included); returns the seconds until it answered."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        started = time.monotonic()
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    MARIADBD,
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    f"--socket={self.root / 's.sock'}",
                    f"--pid-file={self.root / 'server.pid'}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    "--user=root",
                    "--skip-grant-tables",
                    "--skip-name-resolve",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=32M",
                    "--innodb-flush-log-at-trx-commit=1",
                    "--character-set-server=utf8mb4",
                    "--collation-server=utf8mb4_unicode_ci",
                    "--max-connections=200",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        deadline = started + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1).close()
                return time.monotonic() - started
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise TimeoutError("the private mariadbd did not answer") from None
                time.sleep(0.05)  # a blocking wait in a fixture or a thread: nothing else to run

    def execute(self, sql: str, database: str | None = None) -> list[tuple]:
        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", database=database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                rows = list(cur.fetchall())
            conn.commit()
            return rows
        finally:
            conn.close()

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)
