"""The FastAPI application: routes, problem+json errors, and (embedded mode) the reaper thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app import errors
from app.api.routes import files, health, jobs
from app.queue import publisher
from db.jobs import reap
from db.session import session_scope
from db.settings import Settings, get_settings

log = logging.getLogger("pqz.api")


def _version() -> str:
    try:
        return version("pqz")
    except PackageNotFoundError:
        return "0"


def run_reaper(settings: Settings, stop: threading.Event) -> None:
    """Every reap_interval_s: re-queue or fail jobs of vanished workers, publish stranded ones."""
    publish = publisher(settings)
    while not stop.wait(settings.reap_interval_s):
        try:
            with session_scope(settings.resolved_database_url) as session:
                acted = reap(session, publish, timeout_s=settings.heartbeat_timeout_s)
            if acted:
                log.info("reaper acted on %s", ", ".join(acted))
        except Exception:
            log.exception("reaper pass failed; trying again")


def create_app(settings: Settings | None = None, *, reaper: bool = False) -> FastAPI:
    """The API. `reaper=True` runs the reaper in this process (the embedded default)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = None
        if reaper:
            thread = threading.Thread(
                target=run_reaper, args=(settings, stop), name="reaper", daemon=True
            )
            thread.start()
        yield
        stop.set()
        if thread is not None:
            thread.join(timeout=5)

    # The API reference at /docs (and /redoc) from assets the package carries: a GPU box
    # without internet gets a working page, not a blank one waiting on a CDN.
    app = FastAPIOffline(
        title="pqz",
        version=_version(),
        description="Upload a trained PyTorch checkpoint, compress it, download the .pqz.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    app.include_router(files.router)
    app.include_router(jobs.router)
    app.include_router(health.router)
    return app
