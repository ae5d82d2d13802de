"""Service commands: `pqz serve` (everything, embedded), `pqz api`, `pqz worker`, `pqz migrate`,
`pqz keys create`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.output import console, errors, fail, print_json

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from db.models import ApiKey

keys_app = typer.Typer(
    help="API keys: `pqz keys create NAME` prints a new key once.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(api)
    app.command(name="worker")(worker_command)
    app.command()(migrate)
    app.add_typer(keys_app, name="keys")


def _prepare() -> None:
    """Migrate the database and publish what this machine's workers can run."""
    from db.migrate import upgrade
    from db.settings import get_settings

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    from worker.tasks import publish_catalog_now

    publish_catalog_now()


def migrate() -> None:
    """Create or upgrade the database schema (Alembic), and publish the model catalog."""
    from db.settings import get_settings

    _prepare()
    console.print(
        f"database ready: {_safe_url(get_settings().resolved_database_url)}", highlight=False
    )


def _safe_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


@contextlib.contextmanager
def _key_database() -> Iterator[Session]:
    """A session on the service's database, for the key commands, which run on the server."""
    from sqlalchemy.exc import OperationalError

    from db.migrate import upgrade
    from db.session import session_scope, sqlite_path
    from db.settings import get_settings

    settings = get_settings()
    url = settings.resolved_database_url
    database = sqlite_path(url)
    if database is not None and not database.is_file():
        # A key in a database no server reads would be refused: most likely PQZ_HOME is wrong.
        fail(
            f"no database at {database} (PQZ_HOME={settings.home}): start the service with "
            "`pqz serve`, or run `pqz migrate`, with the same PQZ_HOME first"
        )
    try:
        upgrade(url)
        with session_scope(url) as session:
            yield session
    except OperationalError as error:
        fail(f"cannot use the database {_safe_url(url)}: {str(error.orig).splitlines()[0]}")


@keys_app.command("create")
def create_key(
    name: Annotated[str, typer.Argument(help="The user the key belongs to (created if new).")],
    json_output: Annotated[bool, typer.Option("--json", help="Print {name, key}.")] = False,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from db.jobs import create_api_key

    with _key_database() as session:
        _, key = create_api_key(session, name)
    if json_output:
        print_json({"name": name, "key": key})
    else:
        console.print(f"API key for {name} (shown once, store it now):\n{key}", highlight=False)


@keys_app.command("list")
def list_keys(
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Every API key: its id, the user it belongs to, its first characters, when it was made."""
    from db.jobs import list_api_keys

    with _key_database() as session:
        rows = [_key_row(key, user) for key, user in list_api_keys(session)]
    if json_output:
        print_json(rows)
        return
    for row in rows:
        console.print(
            f"{row['id']}  {row['user']}  {row['prefix']}...  created {row['created_at']}",
            highlight=False,
            soft_wrap=True,
        )
    if not rows:
        console.print("no API keys")


@keys_app.command("revoke")
def revoke_key(
    which: Annotated[
        str, typer.Argument(help="The key's id (key-...), the key itself, or its shown prefix.")
    ],
) -> None:
    """Delete an API key: requests with it are refused (401) from now on."""
    from db.jobs import revoke_api_key

    with _key_database() as session:
        matches = [_key_row(key, user) for key, user in revoke_api_key(session, which)]
    if not matches:
        fail(f"no API key with id, key or prefix '{which}' (`pqz keys list` shows them)")
    if len(matches) > 1:
        ids = ", ".join(row["id"] for row in matches)
        fail(f"'{which}' is the prefix of {len(matches)} keys ({ids}): give the id")
    console.print(f"revoked {matches[0]['id']} ({matches[0]['prefix']}..., {matches[0]['user']})")


def _key_row(key: ApiKey, user: str) -> dict[str, Any]:
    return {
        "id": key.id,
        "user": user,
        "prefix": key.prefix,
        "created_at": f"{key.created_at:%Y-%m-%d %H:%M}",
    }


def _worker_command(name: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-Q", "gpu", "-c", "1", "-P", "prefork", "--max-tasks-per-child=1",
        "--without-mingle", "--without-gossip", "-n", f"{name}@%h", "--loglevel=INFO",
    ]  # fmt: skip


def _start_worker(gpu: str, log_dir: Path) -> subprocess.Popen[bytes]:
    """One Celery worker on GPU `gpu` (CUDA_VISIBLE_DEVICES), or on the CPU for ""; it ends
    with this process, even one killed with SIGKILL (worker/lifeline.py)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PQZ_PARENT_PID": str(os.getpid())}
    if gpu:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    with _worker_log(gpu, log_dir).open("ab") as log:
        return subprocess.Popen(
            _worker_command(f"gpu{gpu}" if gpu else "cpu"),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: `_stop` reaches the job's process too
        )


def _worker_log(gpu: str, log_dir: Path) -> Path:
    return log_dir / f"worker-{'gpu' + gpu if gpu else 'cpu'}.log"


def _start_workers(gpus: list[str], log_dir: Path) -> list[subprocess.Popen[bytes]]:
    """One Celery worker per GPU, or one on the CPU."""
    return [_start_worker(gpu, log_dir) for gpu in gpus or [""]]


class _Keeper(threading.Thread):
    """Starts another worker when one exits while `pqz serve` runs (killed for memory, say):
    the reaper puts its job back in the queue, and with no worker every job would wait there.
    A worker that keeps exiting within seconds of its start stops the service instead."""

    QUICK_S = 15.0  # an exit this soon after the start counts as a failure to start
    TRIES = 3

    def __init__(self, gpus: list[str], log_dir: Path) -> None:
        super().__init__(name="worker-keeper", daemon=True)
        self.gpus, self.log_dir = gpus or [""], log_dir
        self.processes = _start_workers(self.gpus, log_dir)
        self.started = [time.monotonic()] * len(self.processes)
        self.failures = [0] * len(self.processes)
        self.stopping = threading.Event()
        self.gave_up = False

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            for index, process in enumerate(self.processes):
                if process.poll() is None or self.stopping.is_set():
                    continue
                quick = time.monotonic() - self.started[index] < self.QUICK_S
                self.failures[index] = self.failures[index] + 1 if quick else 0
                log = _worker_log(self.gpus[index], self.log_dir)
                if self.failures[index] >= self.TRIES:
                    errors.print(
                        f"error: the worker exited with status {process.returncode} "
                        f"{self.TRIES} times just after starting; see {log}",
                        highlight=False,
                        soft_wrap=True,
                    )
                    self.gave_up = True
                    os.kill(os.getpid(), signal.SIGTERM)  # stops the API: see `_interrupt`
                    return
                errors.print(
                    f"the worker exited with status {process.returncode}; starting another "
                    f"(its log: {log})",
                    highlight=False,
                    soft_wrap=True,
                )
                self.processes[index] = _start_worker(self.gpus[index], self.log_dir)
                self.started[index] = time.monotonic()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
        _stop(self.processes)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each worker's whole group: Celery stops taking jobs, and the process running
    one puts it back in the queue at its next step (worker/pipeline.py); past 20 s, SIGKILL
    (the reaper re-queues what was still running then)."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _first_key() -> str | None:
    """On a fresh database, a first API key for the person who started the service."""
    from sqlalchemy import select

    from db.jobs import create_api_key
    from db.models import ApiKey
    from db.session import session_scope
    from db.settings import get_settings

    with session_scope(get_settings().resolved_database_url) as session:
        if session.execute(select(ApiKey.id).limit(1)).first() is not None:
            return None
        _, key = create_api_key(session, "admin")
        return key


def _serve_api(host: str, port: int, reaper: bool) -> None:
    import uvicorn

    from app.main import create_app

    uvicorn.run(create_app(reaper=reaper), host=host, port=port, log_level="info")


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Everything on one machine: migrations, one worker process, the reaper and the API.

    With no PQZ_DATABASE_URL / PQZ_BROKER_URL this is the embedded default: SQLite and a
    filesystem broker under PQZ_HOME (./var). Ctrl-C or SIGTERM stops all of it.
    """
    from db.settings import get_settings

    settings = get_settings()
    _check_port(host, port)  # before a first API key is shown for a server that never starts
    # In a child: publishing the catalog loads torch and the zoo, which the API process that
    # this one becomes must not carry (a gigabyte of memory, and the rule that app/ is torch-free).
    prepared = subprocess.run([sys.executable, "-m", "cli.main", "migrate"], check=False)
    if prepared.returncode != 0:
        raise typer.Exit(prepared.returncode)
    key = _first_key()
    keeper = _Keeper(_visible_gpus()[:1], settings.home / "logs")
    keeper.start()
    url = f"http://{host}:{port}"
    logs = settings.home / "logs"
    console.print(
        f"pqz is serving at {url} (API docs: {url}/docs); worker logs: {logs}", soft_wrap=True
    )
    if key is not None:
        console.print(f"first API key (shown once): {key}", highlight=False, soft_wrap=True)
        console.print(f"export PQZ_URL={url} PQZ_API_KEY={key}", highlight=False, soft_wrap=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _serve_api(host, port, reaper=True)
    except KeyboardInterrupt:
        pass
    finally:
        keeper.stop()
    if keeper.gave_up:
        raise typer.Exit(1)


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            fail(f"cannot listen on {host}:{port}: {error.strerror} (choose another with --port)")


def api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    reaper: Annotated[
        bool, typer.Option(help="Run the reaper here (else celery beat runs it).")
    ] = False,
) -> None:
    """Only the API (production: behind a proxy, workers elsewhere)."""
    _check_port(host, port)
    _serve_api(host, port, reaper)


def worker_command(
    gpus: Annotated[
        str | None, typer.Option(help="GPU indices, e.g. 0,1 (default: all visible).")
    ] = None,
) -> None:
    """One worker process per GPU on this machine (CPU when there is none), until Ctrl-C."""
    from db.settings import get_settings

    chosen = gpus.split(",") if gpus else _visible_gpus()
    settings = get_settings()
    workers = _start_workers(chosen, settings.home / "logs")
    where = ", ".join(chosen) or "the CPU"
    console.print(f"{len(workers)} worker(s) on {where}; logs in {settings.home / 'logs'}")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while all(process.poll() is None for process in workers):
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(workers)
    failed = [
        process.returncode for process in workers if process.returncode not in (0, -signal.SIGTERM)
    ]
    if failed:
        fail(f"a worker exited with status {failed[0]}; see its log")


def _interrupt(*_: object) -> None:
    """SIGTERM stops like Ctrl-C: the `finally` blocks stop the workers."""
    raise KeyboardInterrupt


def _visible_gpus() -> list[str]:
    """GPU indices without touching CUDA in this process (the parent must stay CUDA-free)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu for gpu in visible.split(",") if gpu.strip()]
    try:
        done = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [
        str(index) for index, line in enumerate(done.stdout.splitlines()) if line.startswith("GPU ")
    ]
