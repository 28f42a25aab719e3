"""A real PostgreSQL server for the embedded run and the tests, from the binaries in the ``pgserver`` wheel.

We use only ``pgserver``'s binaries, not its ``PostgresServer``: that one listens on a Unix socket only and
keeps global lock files, while Omni's services and tests connect over TCP to a port of their choosing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import shlex
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

from omni_kit.embedded._process import EmbeddedServerError, log_size, log_tail, pid_alive
from omni_kit.embedded.ports import free_port, port_is_free

SUPERUSER = "postgres"
"""The database superuser initdb creates; it logs in without a password (trust) on 127.0.0.1 only."""

SYSTEM_USER = "omni-pg"
"""The operating-system user PostgreSQL runs as when we are root (postgres refuses to run as root)."""

HOST = "127.0.0.1"
_DUPLICATE_DATABASE = "42P04"
_MAX_IDENTIFIER_BYTES = 63


@functools.cache
def postgres_bin_dir() -> Path:
    """Return the directory holding ``postgres``, ``initdb``, ``pg_ctl`` and ``psql`` from ``pgserver``.

    This is ``pgserver._commands.POSTGRES_BIN_PATH``, found without importing ``pgserver``: its import
    sets up its own server machinery and warns about runtime directories we do not use.
    """
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("the pgserver package (PostgreSQL binaries) is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise EmbeddedServerError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


@dataclass(frozen=True)
class _SystemUser:
    """The unprivileged account the server processes run as."""

    name: str
    uid: int
    gid: int


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1 at ``port`` (a free one if None).

    ``start()`` creates the cluster on first use (trust authentication, UTF8, superuser ``postgres``) and
    starts the server; a later ``start()`` on the same directory finds the same data. ``durable=False`` turns
    off fsync and friends: much faster, and a crash of the machine may lose the data, which is what tests
    want. Used as a context manager it starts on entry and stops on exit.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        durable: bool = True,
        max_connections: int = 300,
        start_timeout: float = 60.0,
    ) -> None:
        """Describe the server; nothing starts until ``start()``."""
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.durable = durable
        self.max_connections = max_connections
        self.start_timeout = start_timeout
        self._requested_port = port
        self._port = port
        self._started = False
        self._system_user = _system_user()

    # -- addresses ---------------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return HOST

    @property
    def port(self) -> int:
        """The TCP port the server listens on; known once started (or when given)."""
        if self._port is None:
            raise EmbeddedServerError("EmbeddedPostgres has no port yet: call start() first")
        return self._port

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.data_dir / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        """A short directory for the Unix socket (the data directory's path may be too long for one)."""
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"omni-pg-{digest}"

    def url(self, database: str = "postgres") -> str:
        """Return the SQLAlchemy URL of ``database``: ``postgresql+asyncpg://postgres@127.0.0.1:PORT/db``."""
        return f"postgresql+asyncpg://{SUPERUSER}@{self.host}:{self.port}/{quote(database, safe='')}"

    def dsn(self, database: str = "postgres") -> str:
        """Return the libpq/asyncpg DSN of ``database``: ``postgresql://postgres@127.0.0.1:PORT/db``."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{quote(database, safe='')}"

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster if needed and start the server; return once it accepts connections.

        A server still running on this data directory from an earlier run (one that was killed before it
        could stop it) is stopped first, so the server always runs with this object's port and settings.
        Raises ``EmbeddedServerError`` with the end of the server log if it does not come up.
        """
        if self._started:
            return
        try:
            self._start()
        except BaseException:
            # Leave nothing behind: a caller whose start failed has no reason to call stop().
            with contextlib.suppress(Exception):
                self.stop()
            raise

    def _start(self) -> None:
        """Do the work of ``start()``; on failure ``start()`` cleans up after it."""
        self._prepare_directories()
        if (self.data_dir / "PG_VERSION").exists():
            self._stop_leftover()
        else:
            self._initdb()
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(1, attempts + 1):
            port = self._requested_port if self._requested_port is not None else free_port(HOST)
            if not port_is_free(port, HOST):
                if attempt < attempts:
                    continue
                raise EmbeddedServerError(
                    f"cannot start PostgreSQL on {HOST}:{port}: something else is listening there"
                )
            log_start = log_size(self.log_path)
            result = self._pg_ctl_start(port)
            if result.returncode == 0:
                self._port = port
                break
            tail = log_tail(self.log_path, since=log_start)
            if "could not bind" in tail and attempt < attempts:
                continue  # another process took the free port between our check and the server's bind
            raise EmbeddedServerError(
                f"PostgreSQL did not start on {HOST}:{port} (data {self.data_dir}).\n"
                f"pg_ctl said: {(result.stdout + result.stderr).strip()}\n"
                f"last lines of {self.log_path}:\n{tail}"
            )
        self._started = True
        self._wait_until_ready()

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are cut, data is flushed) and wait until it is down.

        Does nothing if no server runs on the data directory.
        """
        self._started = False
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._pg_ctl_stop()
        finally:
            with contextlib.suppress(OSError):
                self.socket_dir.rmdir()

    def _pg_ctl_stop(self) -> None:
        """Stop the server on the data directory and wait; raise if it will not go."""
        result = self._run_pg_tool(
            ["pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "-s"]
        )
        if result.returncode != 0 and self.is_running():
            # Fast shutdown waits for the checkpoint; if even that hangs, give up on it rather than hang.
            self._run_pg_tool(["pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", "-s"])
            if self.is_running():
                raise EmbeddedServerError(
                    f"PostgreSQL in {self.data_dir} did not stop: {(result.stdout + result.stderr).strip()}"
                )

    def is_running(self) -> bool:
        """Tell whether a server is running on the data directory (``pg_ctl status``)."""
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        return self._run_pg_tool(["pg_ctl", "status", "-D", str(self.data_dir)]).returncode == 0

    def is_alive(self) -> bool:
        """Tell cheaply (no subprocess) whether the server process this data directory names still runs."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return False
        return pid_alive(pid)

    def restart(self) -> None:
        """Start the server again after it died (same port and settings); ``start()`` after ``stop()``."""
        self._started = False
        self.start()

    def __enter__(self) -> Self:
        """Start the server."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    # -- databases ---------------------------------------------------------------------------------------

    def create_database(self, name: str, *, template: str | None = None) -> None:
        """Create database ``name`` unless it exists; safe to call again and from several processes at once.

        With ``template`` the new database is a copy of that one (which must have no open connections), a
        quick way to give each test a migrated database of its own.
        """
        sql = f"CREATE DATABASE {quote_identifier(name)}"
        if template is not None:
            sql += f" TEMPLATE {quote_identifier(template)}"
        if name in self._database_names():
            return
        try:
            self.psql(sql)
        except EmbeddedServerError as error:
            if _DUPLICATE_DATABASE not in str(error):
                raise

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, closing any sessions still connected to it."""
        self.psql(f"DROP DATABASE IF EXISTS {quote_identifier(name)} WITH (FORCE)")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with ``psql`` as the superuser and return its unaligned, tuples-only output.

        Raises ``EmbeddedServerError`` carrying psql's message (with the SQLSTATE) if a statement fails.
        """
        command = [
            str(postgres_bin_dir() / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            database,
            "-c",
            sql,
        ]
        env = _clean_env() | {"PGCLIENTENCODING": "UTF8"}
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
        if result.returncode != 0:
            raise EmbeddedServerError(f"psql failed on {database}: {result.stderr.strip()}\nSQL: {sql}")
        return result.stdout

    def _database_names(self) -> set[str]:
        """Return the names of the databases in the cluster."""
        return set(self.psql("SELECT datname FROM pg_database").split("\n")) - {""}

    # -- internals ---------------------------------------------------------------------------------------

    def _prepare_directories(self) -> None:
        """Create the data and socket directories and, when root, hand them to the server's user."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        user = self._system_user
        if user is None:
            return
        _make_traversable(self.data_dir)
        _make_binaries_usable(postgres_bin_dir().parent)
        for directory in (self.data_dir, self.socket_dir):
            if directory.stat().st_uid != user.uid:
                _chown_tree(directory, user)

    def _initdb(self) -> None:
        """Create a new cluster in the (empty) data directory."""
        command = [
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            # The C locale sorts by bytes: the same order on every machine, and the fastest.
            "--locale=C",
        ]
        if not self.durable:
            command.append("--no-sync")
        result = self._run_pg_tool(command, timeout=300)
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"initdb failed for {self.data_dir}:\n{(result.stdout + result.stderr).strip()}"
            )

    def _stop_leftover(self) -> None:
        """Stop a server an earlier run left running on this data directory, if there is one."""
        if (self.data_dir / "postmaster.pid").exists() and self.is_running():
            self._pg_ctl_stop()

    def _server_options(self, port: int) -> list[str]:
        """Return the ``postgres`` command-line options for this server."""
        options = ["-p", str(port), "-h", HOST, "-k", str(self.socket_dir)]
        settings = {"max_connections": str(self.max_connections)}
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        for key, value in settings.items():
            options += ["-c", f"{key}={value}"]
        return options

    def _pg_ctl_start(self, port: int) -> subprocess.CompletedProcess[str]:
        """Start the server in the background with ``pg_ctl`` and wait until it reports ready."""
        # pg_ctl detaches the server into its own session, so a Ctrl-C in the terminal does not reach it
        # and the caller decides when (and in which order) it stops.
        command = [
            "pg_ctl",
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(int(self.start_timeout)),
            "-s",
            "-o",
            shlex.join(self._server_options(port)),
        ]
        return self._run_pg_tool(command, timeout=self.start_timeout + 10)

    def _wait_until_ready(self) -> None:
        """Wait until the server answers on TCP, as clients will reach it."""
        deadline = time.monotonic() + self.start_timeout
        command = [str(postgres_bin_dir() / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)]
        command += ["-U", SUPERUSER, "-d", "postgres", "-t", "2"]
        while subprocess.run(command, env=_clean_env(), check=False).returncode != 0:
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"PostgreSQL started but does not answer on {self.host}:{self.port}.\n"
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _run_pg_tool(self, command: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool from the bin directory, as the server's user when we are root."""
        argv = [str(postgres_bin_dir() / command[0]), *command[1:]]
        kwargs: dict[str, Any] = {}
        if self._system_user is not None:
            user = self._system_user
            kwargs = {"user": user.uid, "group": user.gid, "extra_groups": []}
        # cwd "/": the server's user may not be allowed into the caller's working directory. Own session: a
        # Ctrl-C meant for the caller must not kill initdb or pg_ctl half-way; the caller stops us instead.
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=_clean_env(),
            cwd="/",
            timeout=timeout,
            check=False,
            start_new_session=True,
            **kwargs,
        )


def quote_identifier(name: str) -> str:
    """Quote a database name for SQL, refusing names PostgreSQL would silently cut short."""
    if not name or "\0" in name or len(name.encode()) > _MAX_IDENTIFIER_BYTES:
        raise ValueError(f"not a usable PostgreSQL name (1 to 63 bytes, no NUL): {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _clean_env() -> dict[str, str]:
    """Return our environment without PG* variables, which would otherwise steer the tools elsewhere."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _system_user() -> _SystemUser | None:
    """Return the account to run the server as when we are root (creating it once), else None."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import pwd

    for attempt in range(20):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(SYSTEM_USER)
            return _SystemUser(SYSTEM_USER, entry.pw_uid, entry.pw_gid)
        # Several test workers may race to create the account; the loser sees a locked /etc/passwd.
        _create_system_user()
        time.sleep(0.05 * attempt)
    raise EmbeddedServerError(f"could not create the system user {SYSTEM_USER!r} to run PostgreSQL as")


def _create_system_user() -> None:
    """Create the unprivileged system account, with useradd or (on BusyBox systems) adduser."""
    commands = [
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin"],
        ["adduser", "-S", "-D", "-H", "-s", "/sbin/nologin"],
    ]
    for command in commands:
        with contextlib.suppress(OSError):
            subprocess.run([*command, SYSTEM_USER], capture_output=True, check=False)
            return


def _make_traversable(path: Path) -> None:
    """Let other users pass through every directory above ``path`` (execute bit only, no listing)."""
    for directory in path.parents:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            with contextlib.suppress(OSError):
                directory.chmod(mode | stat.S_IXOTH)


@functools.cache
def _make_binaries_usable(install_dir: Path) -> None:
    """Let the server's user read the PostgreSQL installation and run its programs (once per process)."""
    _make_traversable(install_dir)
    for root, dirs, files in os.walk(install_dir):
        for name in dirs:
            _add_mode(Path(root, name), stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            path = Path(root, name)
            executable = path.stat().st_mode & stat.S_IXUSR
            _add_mode(path, stat.S_IROTH | (stat.S_IXOTH if executable else 0))
    _add_mode(install_dir, stat.S_IROTH | stat.S_IXOTH)


def _add_mode(path: Path, bits: int) -> None:
    """Add permission ``bits`` to ``path`` if it lacks any; a read-only install is left as it is."""
    mode = path.stat().st_mode
    if mode & bits != bits:
        with contextlib.suppress(OSError):
            path.chmod(mode | bits)


def _chown_tree(path: Path, user: _SystemUser) -> None:
    """Give ``path`` and everything below it to ``user``."""
    os.chown(path, user.uid, user.gid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.uid, user.gid, follow_symlinks=False)
