"""A throwaway PgBouncer for tests: config in a temporary directory, a free port, stopped
at the end.

    with PgBouncer("127.0.0.1", 5432, pool_mode="transaction",
                   ignore_startup_parameters=("plan_cache_mode", "search_path")) as bouncer:
        dsn = bouncer.dsn("mydb")           # postgresql://postgres@127.0.0.1:<port>/mydb
        ...

``start()`` blocks (it polls with short sleeps until a login through the bouncer
succeeds): use it from a synchronous fixture, or ``await asyncio.to_thread(b.start)``.

    @pytest.fixture
    def bouncer(server_dsn):
        parts = urlsplit(server_dsn)
        with PgBouncer(parts.hostname, parts.port or 5432) as bouncer:
            yield bouncer

Authentication is ``trust`` (the user must be listed: ``users``, default ``postgres``)
and every database name is passed through to the server (``* = host=... port=...``), so
one bouncer serves any database of the server. PgBouncer refuses to run as root: when
run as root it runs as the ``postgres`` OS user (``run_as``). It stays in the
foreground as our child, so stopping it is a signal to a process id we own.

``max_prepared_statements`` (protocol-level named prepared statements in transaction
mode) exists from PgBouncer 1.21 on; older versions refuse to load a config naming it, so
passing it to one raises ``PgBouncerUnsupported`` (``supports_prepared_statements()``
says beforehand).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

#: Where Debian puts it (/usr/sbin is not on every user's PATH).
SEARCH_PATHS = ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer")


class PgBouncerError(RuntimeError):
    """PgBouncer could not be found, configured or started; the message says why."""


class PgBouncerUnsupported(PgBouncerError):
    """The installed PgBouncer lacks a setting the caller asked for."""


def find_pgbouncer() -> str | None:
    """The pgbouncer executable, or None when it is not installed."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((path for path in SEARCH_PATHS if os.access(path, os.X_OK)), None)


def pgbouncer_version(executable: str | None = None) -> tuple[int, ...]:
    """The installed PgBouncer's version, e.g. (1, 18, 0)."""
    executable = executable or find_pgbouncer()
    if executable is None:
        raise PgBouncerError("pgbouncer is not installed (apt-get install pgbouncer)")
    out = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    match = re.search(r"PgBouncer (\d+)\.(\d+)(?:\.(\d+))?", out.stdout + out.stderr)
    if match is None:
        raise PgBouncerError(f"cannot read the version of {executable}: {out.stdout!r}")
    return tuple(int(part or 0) for part in match.groups())


#: Where .ci/run builds a PgBouncer that has ``max_prepared_statements`` (Debian 12 has
#: 1.18): from Debian's own source package of 1.24.1. ``$PQRUN_PGBOUNCER_121`` overrides.
NEWER_SEARCH_PATHS = ("/opt/pgbouncer-1.24/bin/pgbouncer",)


def find_pgbouncer_with_prepared_statements() -> str | None:
    """A PgBouncer of 1.21 or later (``max_prepared_statements``), or None."""
    candidates = [os.environ.get("PQRUN_PGBOUNCER_121", ""), *NEWER_SEARCH_PATHS]
    candidates.append(find_pgbouncer() or "")
    for path in candidates:
        if path and os.access(path, os.X_OK):
            with contextlib.suppress(PgBouncerError, OSError, subprocess.SubprocessError):
                if supports_prepared_statements(path):
                    return path
    return None


def supports_prepared_statements(executable: str | None = None) -> bool:
    """Whether this PgBouncer has ``max_prepared_statements`` (1.21 and later)."""
    return pgbouncer_version(executable) >= (1, 21)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _ini_value(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    text = str(value)
    if "\n" in text:
        raise ValueError(f"a PgBouncer setting cannot hold a newline: {text!r}")
    return text


def _libpq_value(value: str) -> str:
    """A value of a ``[databases]`` entry: quoted when it holds spaces or quotes."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PgBouncer:
    """One PgBouncer process in front of ``host:port``; a context manager.

    ``settings`` are added to the ``[pgbouncer]`` section as they are (they override
    the defaults here). ``start_within``/``stop_within`` are deadlines in seconds, polled,
    generous for a loaded machine. ``executable``: another pgbouncer than the one on the
    PATH (``find_pgbouncer_with_prepared_statements()``, say).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5432,
        *,
        pool_mode: str = "transaction",
        users: Iterable[str] = ("postgres",),
        ignore_startup_parameters: Iterable[str] = (),
        max_prepared_statements: int | None = None,
        default_pool_size: int = 20,
        max_client_conn: int = 500,
        settings: Mapping[str, object] | None = None,
        database_options: Mapping[str, str] | None = None,
        run_as: str | None = None,
        listen_host: str = "127.0.0.1",
        probe_database: str = "postgres",
        start_within: float = 60.0,
        stop_within: float = 30.0,
        executable: str | None = None,
    ) -> None:
        executable = executable or find_pgbouncer()
        if executable is None:
            raise PgBouncerError("pgbouncer is not installed (apt-get install pgbouncer)")
        self.executable = executable
        self.version = pgbouncer_version(executable)
        if max_prepared_statements is not None and self.version < (1, 21):
            raise PgBouncerUnsupported(
                f"max_prepared_statements needs PgBouncer 1.21 or later; this is "
                f"{'.'.join(map(str, self.version))}"
            )
        self.server_host, self.server_port = host, port
        self.pool_mode = pool_mode
        self.users = tuple(users)
        if not self.users:
            raise ValueError("users: name at least one user (auth_type=trust checks the name)")
        self.ignore_startup_parameters = tuple(ignore_startup_parameters)
        self.max_prepared_statements = max_prepared_statements
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.settings = dict(settings or {})
        #: Added to the ``[databases]`` entry, e.g. {"connect_query": "SET ..."} (run by
        #: PgBouncer on each new server connection) or {"pool_size": "2"}.
        self.database_options = dict(database_options or {})
        if run_as is None and os.geteuid() == 0:
            run_as = "postgres"  # "FATAL PgBouncer should not run as root"
        self.run_as = run_as
        self.listen_host = listen_host
        #: The database the readiness check logs into (through the bouncer).
        self.probe_database = probe_database
        self.start_within = start_within
        self.stop_within = stop_within
        self.port: int | None = None
        self.root: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    # -- where to connect ------------------------------------------------------------------

    def dsn(self, database: str = "postgres", user: str | None = None) -> str:
        """A URL DSN for ``database`` through this bouncer (once started)."""
        if self.port is None:
            raise PgBouncerError("the bouncer is not started")
        return f"postgresql://{user or self.users[0]}@{self.listen_host}:{self.port}/{database}"

    @property
    def logfile(self) -> Path:
        assert self.root is not None
        return self.root / "pgbouncer.log"

    def log(self, last: int = 4000) -> str:
        """The end of PgBouncer's log (its own log file, then what it wrote to stderr)."""
        if self.root is None:
            return ""
        text = ""
        for path in (self.logfile, self.root / "stderr.log"):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return text[-last:]

    # -- config ----------------------------------------------------------------------------

    def config(self, port: int) -> str:
        assert self.root is not None
        values: dict[str, object] = {
            "listen_addr": self.listen_host,
            "listen_port": port,
            "unix_socket_dir": "",  # no socket file to clash with anyone's
            "auth_type": "trust",
            "auth_file": self.root / "userlist.txt",
            "pool_mode": self.pool_mode,
            "default_pool_size": self.default_pool_size,
            "max_client_conn": self.max_client_conn,
            "logfile": self.logfile,
            "pidfile": "",
            "admin_users": ",".join(self.users),
            "stats_users": ",".join(self.users),
            # Login to the bouncer must not wait long for a server that is not there.
            "server_connect_timeout": 15,
            "server_login_retry": 1,
        }
        if self.ignore_startup_parameters:
            values["ignore_startup_parameters"] = ",".join(self.ignore_startup_parameters)
        if self.max_prepared_statements is not None:
            values["max_prepared_statements"] = self.max_prepared_statements
        values.update(self.settings)
        target = {"host": self.server_host, "port": str(self.server_port)}
        target.update(self.database_options)
        lines = [
            "[databases]",
            "* = " + " ".join(f"{key}={_libpq_value(value)}" for key, value in target.items()),
            "",
            "[pgbouncer]",
            *(f"{key} = {_ini_value(value)}" for key, value in values.items()),
        ]
        return "\n".join(lines) + "\n"

    # -- life ------------------------------------------------------------------------------

    def start(self) -> PgBouncer:
        if self.process is not None:
            raise PgBouncerError("already started")
        self.root = Path(tempfile.mkdtemp(prefix="pqrun-pgbouncer-"))
        popen_user: dict[str, Any] = {}
        if self.run_as is not None:
            try:
                entry = pwd.getpwnam(self.run_as)
            except KeyError:
                raise PgBouncerError(
                    f"PgBouncer refuses to run as root, and there is no {self.run_as!r} OS "
                    "user to run it as"
                ) from None
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            popen_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        (self.root / "userlist.txt").write_text("".join(f'"{u}" ""\n' for u in self.users))
        # A free port can be taken between our look and PgBouncer's bind: try a few.
        last_error = ""
        for _attempt in range(5):
            port = _free_port(self.listen_host)
            ini = self.root / "pgbouncer.ini"
            ini.write_text(self.config(port))
            with contextlib.suppress(FileNotFoundError):
                self.logfile.unlink()
            stderr = (self.root / "stderr.log").open("wb")
            try:
                self.process = subprocess.Popen(
                    [self.executable, str(ini)],
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                    cwd=self.root,
                    start_new_session=True,  # a Ctrl-C of the test run is ours to pass on
                    **popen_user,
                )
            finally:
                stderr.close()
            self.port = port
            try:
                self._wait_ready()
            except PgBouncerError as exc:
                last_error = str(exc)
                self._terminate()
                if "Address already in use" in last_error:
                    continue
                self._cleanup()
                raise
            return self
        self._cleanup()
        raise PgBouncerError(f"PgBouncer found no free port: {last_error}")

    def _wait_ready(self) -> None:
        """Poll until a client logs in through the bouncer (which takes a server login)."""
        assert self.process is not None
        assert self.port is not None
        deadline = time.monotonic() + self.start_within
        every = 0.02
        last = "no attempt yet"
        while True:
            code = self.process.poll()
            if code is not None:
                raise PgBouncerError(f"PgBouncer exited with {code} at start:\n{self.log()}")
            try:
                _login(self.listen_host, self.port, self.users[0], self.probe_database, within=5.0)
                return
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise PgBouncerError(
                    f"PgBouncer did not accept a login within {self.start_within:g} s "
                    f"(last: {last}):\n{self.log()}"
                )
            time.sleep(every)
            every = min(every * 2, 0.5)

    def _terminate(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            # SIGTERM: immediate shutdown (SIGINT would wait for clients to leave).
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_within)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout=self.stop_within)

    def _cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root, self.port = None, None

    def stop(self) -> None:
        """Stop the bouncer (clients are cut off) and remove its directory."""
        self._terminate()
        self._cleanup()

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _login(host: str, port: int, user: str, database: str, within: float) -> None:
    """One login over the wire protocol up to ReadyForQuery, then Terminate.

    Raises OSError (ConnectionError for an error answer) when it does not get there.
    No driver needed, and it checks the whole path: bouncer up, server reachable.
    """
    with socket.create_connection((host, port), timeout=within) as sock:
        sock.settimeout(within)
        body = struct.pack("!I", 196608)  # protocol 3.0
        for key, value in (("user", user), ("database", database)):
            body += key.encode() + b"\0" + value.encode() + b"\0"
        body += b"\0"
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        while True:
            kind, payload = _read_message(sock)
            if kind == b"E":
                fields = {
                    part[:1].decode(): part[1:].decode(errors="replace")
                    for part in payload.split(b"\0")
                    if part
                }
                raise ConnectionError(f"login refused: {fields.get('M', payload)!r}")
            if kind == b"R" and struct.unpack("!I", payload[:4])[0] != 0:
                raise ConnectionError("the bouncer asked for a password (auth_type is trust)")
            if kind == b"Z":
                sock.sendall(b"X" + struct.pack("!I", 4))
                return


def _read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    head = _read_exactly(sock, 5)
    (length,) = struct.unpack("!I", head[1:])
    return head[:1], _read_exactly(sock, length - 4)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("the bouncer closed the connection during login")
        data += chunk
    return data
