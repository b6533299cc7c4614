"""Run Herald, or its tests, on a machine with nothing but Python.

    python -m config.launcher run                   # what `make run` does
    python -m config.launcher test -- [pytest args] # what `make test` does
    python -m config.launcher exec -- COMMAND ...   # any command, same services as test
    python -m config.launcher health [URL]          # container health check of the web

Whatever is set (in the environment or in .env) is used as it is; only
what is missing is provided:

run   DATABASE_URL unset: an embedded PostgreSQL with its data in
      var/pgdata (kept: the next run finds the same data).
      CELERY_BROKER_URL and REDIS_URL unset: kombu's filesystem broker
      under var/broker. SECRET_KEY / HERALD_ENCRYPTION_KEYS unset: made
      once and kept in var/secrets.env (mode 0600). Then migrate,
      collectstatic and herald_bootstrap, and the web server (gunicorn on
      127.0.0.1:$HERALD_PORT, default 8000), a Celery worker and Celery
      beat, until Ctrl-C or SIGTERM, or until one of them dies.
test  DATABASE_URL unset: a throwaway embedded PostgreSQL; REDIS_URL
      unset: a throwaway embedded Redis (and CELERY_BROKER_URL points at
      it); fresh SECRET_KEY / HERALD_ENCRYPTION_KEYS. Runs pytest, returns
      its exit code and deletes what it started.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_NAMES = ("SECRET_KEY", "HERALD_ENCRYPTION_KEYS")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
CHILD_STOP_SECONDS = 30


def _default_queue() -> str:
    return os.environ.get("HERALD_DEFAULT_QUEUE", "herald")


# --- output -------------------------------------------------------------------


def say(message: str) -> None:
    print(f"herald: {message}", flush=True)


class LauncherError(Exception):
    """A clear, expected failure: printed without a traceback."""


class Stop(BaseException):
    """Raised by the SIGINT/SIGTERM handler to unwind into the clean-up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, _frame: Any) -> None:
    raise Stop(signum)


def _note_stop(signum: int, _frame: Any) -> None:
    say(f"{signal.Signals(signum).name} received; still stopping, please wait")


# --- environment ----------------------------------------------------------------


def _unset(name: str) -> bool:
    return not os.environ.get(name, "").strip()


def env_file_read(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments are skipped."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def dotenv_load() -> None:
    """Put .env's values into the environment where it has none (as
    settings.py does), so what .env sets counts as set here too."""
    path = BASE_DIR / ".env"
    if path.exists():
        for key, value in env_file_read(path).items():
            if value and _unset(key):
                os.environ[key] = value


def var_dir() -> Path:
    return Path(os.environ.get("HERALD_VAR_DIR") or BASE_DIR / "var").resolve()


def new_secret(name: str) -> str:
    if name == "HERALD_ENCRYPTION_KEYS":
        from cryptography.fernet import Fernet

        return Fernet.generate_key().decode()
    return secrets.token_urlsafe(50)


def secrets_ensure(path: Path) -> None:
    """Fill unset SECRET_KEY / HERALD_ENCRYPTION_KEYS from `path`, making
    and saving (mode 0600) any that the file lacks."""
    missing = [name for name in SECRET_NAMES if _unset(name)]
    if not missing:
        return
    stored = env_file_read(path) if path.exists() else {}
    made = [name for name in missing if not stored.get(name)]
    for name in made:
        stored[name] = new_secret(name)
    if made:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(
                "# Made by `make run` (config/launcher.py) for this checkout. Keep it\n"
                "# private: HERALD_ENCRYPTION_KEYS decrypts the secrets stored in\n"
                "# var/pgdata; losing it loses them.\n"
            )
            for key, value in stored.items():
                file.write(f"{key}={value}\n")
        os.replace(temporary, path)
        say(f"made {', '.join(made)} and saved them in {path}")
    os.chmod(path, 0o600)
    for name in missing:
        os.environ[name] = stored[name]


def test_secrets_ensure() -> None:
    for name in SECRET_NAMES:
        if _unset(name):
            os.environ[name] = new_secret(name)


def broker_url() -> str:
    return os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL") or ""


# --- processes ------------------------------------------------------------------


def _child_setup() -> None:
    from config.embedded import parent_death_signal

    parent_death_signal()


@dataclass
class Child:
    name: str
    process: subprocess.Popen

    def stop(self) -> None:
        """Ask the leader to shut down; it stops its own workers (signalling
        the whole group would kill Celery's pool processes under it)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)


def spawn(name: str, argv: list[str], **kwargs: Any) -> Child:
    """Start argv in its own session (so its whole process tree can be
    signalled at once), dying with the launcher if the launcher is killed."""
    process = subprocess.Popen(
        argv,
        cwd=BASE_DIR,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
        preexec_fn=_child_setup,
        **kwargs,
    )
    return Child(name, process)


def stop_children(children: list[Child], timeout: float = CHILD_STOP_SECONDS) -> None:
    """SIGTERM each child, wait, then SIGKILL whatever is left in its
    process group (grandchildren such as gunicorn workers, pool processes)."""
    for child in children:
        child.stop()
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"the {child.name} did not stop within {timeout:.0f}s; killing it")
    for child in children:
        # The leader may be gone while forked helpers of its group linger.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=10)


def run_step(argv: list[str], what: str, *, capture: bool = False) -> str:
    """Run a set-up command to its end; its output passes through."""
    child = spawn(what, argv, stdout=subprocess.PIPE if capture else None, text=True)
    output = ""
    try:
        if capture:
            assert child.process.stdout is not None
            for line in child.process.stdout:
                print(line, end="", flush=True)
                output += line
        code = child.process.wait()
    except BaseException:
        stop_children([child], timeout=10)
        raise
    if code != 0:
        raise LauncherError(f"`{what}` failed (exit code {code}); Herald was not started")
    return output


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block SIGINT/SIGTERM raise Stop; afterwards (during the
    clean-up) they only print a note, so the clean-up runs to its end."""
    previous = {sig: signal.signal(sig, _raise_stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _note_stop)
    del previous


@contextlib.contextmanager
def single_instance(folder: Path) -> Iterator[None]:
    """One `run` per var folder: a second would share its database."""
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / "launcher.lock"
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            other = lock.read().strip() or "?"
            raise LauncherError(
                f"Herald is already running from {BASE_DIR} (launcher pid {other}); "
                "stop it first (Ctrl-C in its terminal)"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


# --- run --------------------------------------------------------------------------


def _manage(*args: str) -> list[str]:
    return [sys.executable, str(BASE_DIR / "manage.py"), *args]


def _server_name() -> str:
    """This computer's short host name, as the Local outbox dispatcher
    records it (its batches go to the queue dispatch.<name>)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from dispatchers.services import local_server_name

    return local_server_name().lower()


def command_run() -> int:
    dotenv_load()
    folder = var_dir()
    port = int(os.environ.get("HERALD_PORT") or 8000)
    if _unset("HERALD_PUBLIC_URL"):
        os.environ["HERALD_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    url = os.environ["HERALD_PUBLIC_URL"].rstrip("/")

    children: list[Child] = []
    postgres = None
    stopped_by: int | None = None
    failure: str | None = None
    with contextlib.ExitStack() as cleanup:
        try:
            with stop_signals_raise():
                cleanup.enter_context(single_instance(folder))
                if not port_free(port):
                    raise LauncherError(
                        f"port {port} on 127.0.0.1 is in use; stop what uses it "
                        "or choose another with HERALD_PORT=8001 make run"
                    )
                if _unset("DATABASE_URL"):
                    from config.embedded import start_postgres

                    pgdata = folder / "pgdata"
                    say(f"starting the embedded PostgreSQL (data in {pgdata})")
                    postgres = start_postgres(pgdata)
                    cleanup.callback(_stop_postgres, postgres)
                    os.environ["DATABASE_URL"] = postgres.url()
                if not broker_url():
                    os.environ["CELERY_BROKER_URL"] = "filesystem://"
                    say(f"broker: kombu's filesystem transport under {folder / 'broker'}")
                secrets_ensure(folder / "secrets.env")

                run_step(_manage("migrate", "--noinput"), "manage.py migrate")
                run_step(_manage("collectstatic", "--noinput"), "manage.py collectstatic")
                bootstrap = run_step(
                    _manage("herald_bootstrap"), "manage.py herald_bootstrap", capture=True
                )
                server_name = _server_name()

                cleanup.callback(stop_children, children)
                children.append(
                    spawn(
                        "web server",
                        [sys.executable, "-m", "gunicorn", "config.wsgi"]
                        + ["--bind", f"127.0.0.1:{port}", "--workers", "2"]
                        + ["--graceful-timeout", "10", "--access-logfile", "-"]
                        + ["--no-control-socket"],
                    )
                )
                # 3 processes for 2 cores (measured, README.md, Benchmarks):
                # each spends part of its time waiting on PostgreSQL and SMTP.
                queues = f"{_default_queue()},dispatch.{server_name}"
                children.append(
                    spawn(
                        "Celery worker",
                        [sys.executable, "-m", "celery", "-A", "config", "worker"]
                        + ["-Q", queues, "--concurrency", "3"]
                        + ["--loglevel", "INFO"],
                    )
                )
                children.append(
                    spawn(
                        "Celery beat",
                        [sys.executable, "-m", "celery", "-A", "config", "beat"]
                        + ["-S", "django_celery_beat.schedulers:DatabaseScheduler"]
                        + ["--loglevel", "INFO"],
                    )
                )
                failure = _wait_ready(children, port)
                if failure is None:
                    _banner(url, bootstrap, server_name)
                    failure = _watch(children)
        except Stop as stop:
            stopped_by = stop.signum
        except LauncherError as error:
            failure = str(error)
        except Exception as error:
            from config.embedded import EmbeddedServiceError

            if not isinstance(error, EmbeddedServiceError):
                raise
            failure = str(error)
        finally:
            signal.signal(signal.SIGINT, _note_stop)
            signal.signal(signal.SIGTERM, _note_stop)
            if stopped_by is not None:
                say(f"{signal.Signals(stopped_by).name} received; stopping Herald")
            elif failure is not None:
                say(f"ERROR: {failure}")
                say("stopping everything")
    if failure is not None:
        say("stopped (with an error, see above)")
        return 1
    say("stopped")
    return 0


def _stop_postgres(postgres: Any) -> None:
    say("stopping the embedded PostgreSQL")
    postgres.stop()


def _dead_child(children: list[Child]) -> str | None:
    for child in children:
        code = child.process.poll()
        if code is not None:
            how = f"exited with code {code}"
            if code < 0:
                how = f"was killed by {signal.Signals(-code).name}"
            return f"the {child.name} (pid {child.process.pid}) {how}; its output above says why"
    return None


def _wait_ready(children: list[Child], port: int, timeout: float = 120) -> str | None:
    login = f"http://127.0.0.1:{port}/admin/login/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = _dead_child(children)
        if dead:
            return dead
        if http_ok(login):
            return None
        time.sleep(0.5)
    return f"the web server did not answer {login} within {timeout:.0f}s"


def _watch(children: list[Child]) -> str:
    while True:
        dead = _dead_child(children)
        if dead:
            return dead
        time.sleep(0.5)


def _banner(url: str, bootstrap: str, server_name: str) -> None:
    lines = [
        "",
        "=" * 72,
        f"Herald is running: {url}/",
    ]
    credentials = [
        line.strip()
        for line in bootstrap.splitlines()
        if line.strip().startswith(("user name:", "password:"))
    ]
    if credentials:
        lines += ["Log in with the administrator made just now (shown this once):"]
        lines += [f"    {line}" for line in credentials]
        lines += ["Change the password after logging in."]
    else:
        lines += [
            "Log in with the administrator made on the first run (its password was",
            "printed then). Forgot it? .venv/bin/python manage.py changepassword admin",
        ]
    outbox = os.environ.get("HERALD_OUTBOX_DIR") or var_dir() / "outbox"
    lines += [
        f"Worker queues: {_default_queue()}, dispatch.{server_name}. The 'Local outbox' dispatcher",
        f"writes mail as .eml files to {outbox}",
        "Ctrl-C stops everything.",
        "=" * 72,
        "",
    ]
    print("\n".join(lines), flush=True)


# --- test / exec ------------------------------------------------------------------


def command_exec(argv: list[str]) -> int:
    """Run argv with throwaway services for whatever is not configured."""
    if not argv:
        raise LauncherError("nothing to run")
    dotenv_load()
    with contextlib.ExitStack() as cleanup:
        try:
            with stop_signals_raise():
                if _unset("DATABASE_URL"):
                    from config.embedded import start_throwaway_postgres

                    postgres = start_throwaway_postgres()
                    cleanup.callback(postgres.stop)
                    os.environ["DATABASE_URL"] = postgres.url()
                    say(f"throwaway PostgreSQL: {postgres.url()}")
                if _unset("REDIS_URL"):
                    from config.embedded import start_redis

                    redis = start_redis()
                    cleanup.callback(redis.stop)
                    os.environ["REDIS_URL"] = redis.url
                    say(f"throwaway Redis: {redis.url}")
                if _unset("CELERY_BROKER_URL"):
                    os.environ["CELERY_BROKER_URL"] = os.environ["REDIS_URL"]
                test_secrets_ensure()
        except Stop:
            return 130
        # The command runs in our own process group, so Ctrl-C at a terminal
        # reaches it directly; a SIGTERM sent to us is passed on.
        process = subprocess.Popen(argv)

        def forward(signum: int, _frame: Any) -> None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return process.wait()
        finally:
            signal.signal(signal.SIGINT, _note_stop)
            signal.signal(signal.SIGTERM, _note_stop)


def command_test(pytest_args: list[str]) -> int:
    return command_exec([sys.executable, "-m", "pytest", *pytest_args])


# --- health ---------------------------------------------------------------------------


def command_health(args: list[str]) -> int:
    """Exit 0 if the web server answers (any status below 500) at the given
    URL, default http://127.0.0.1:8000/admin/login/. The request carries the
    host of HERALD_PUBLIC_URL, so it passes ALLOWED_HOSTS. For container
    health checks: `python -m config.launcher health`."""
    from urllib.parse import urlsplit

    url = args[0] if args else "http://127.0.0.1:8000/admin/login/"
    host = urlsplit(os.environ.get("HERALD_PUBLIC_URL") or url).netloc
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, OSError) as error:
        say(f"unhealthy: {url}: {error}")
        return 1
    if status >= 500:
        say(f"unhealthy: {url} answered {status}")
        return 1
    return 0


# --- main ---------------------------------------------------------------------------


USAGE = """usage: python -m config.launcher run
       python -m config.launcher test [--] [pytest arguments]
       python -m config.launcher exec [--] command [arguments]
       python -m config.launcher health [url]"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(__doc__.split("\n\n", 1)[0] + "\n\n" + USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    try:
        if command == "run":
            if rest:
                raise LauncherError(f"`run` takes no arguments (got {' '.join(rest)})")
            return command_run()
        if command == "test":
            return command_test(rest)
        if command == "exec":
            return command_exec(rest)
        if command == "health":
            return command_health(rest)
        raise LauncherError(f"unknown command {command!r}\n{USAGE}")
    except LauncherError as error:
        say(f"ERROR: {error}")
        return 2
    except Exception as error:
        from config.embedded import EmbeddedServiceError

        if isinstance(error, EmbeddedServiceError):
            say(f"ERROR: {error}")
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
