"""The operations API's application: routers, authentication, request limits, error answers, and the replayer
running beside the requests.

The service starts and answers while the catalog database is unreachable: nothing at start-up needs the
catalog (the replayer migrates it when it first reaches it), writes go to the journal, reads fall back to it.
"""

import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dagster_project.api.appliers import APPLIERS
from dagster_project.api.auth import TokenRegistry
from dagster_project.api.routers import executed_obs_units, raw_data_files, raw_data_package, service, staging
from dagster_project.api.smart_query import CatalogGate, SmartQuery
from dagster_project.catalog.db import failing_fast_catalog
from dagster_project.journal.replayer import ReplayReport, Replayer
from dagster_project.journal.store import Journal
from dagster_project.settings import Settings

__all__ = ["ADMIN_TOKEN_VARIABLE", "create_app", "journal_path"]

log = logging.getLogger(__name__)
ADMIN_TOKEN_VARIABLE = "ASTRO_API_ADMIN_TOKEN"


def journal_path(settings: Settings) -> Path:
    return settings.api_journal or settings.home / "api" / "journal.sqlite"


class BodyLimit:
    """Refuses a request body over ``limit`` bytes with 413, by its Content-Length or, without one, as it
    streams in (pure ASGI, so nothing larger is ever buffered)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        received = 0
        too_large = False

        async def counted() -> Message:
            nonlocal received, too_large
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                too_large = True
                return {"type": "http.disconnect"}
            return message

        await self.app(scope, counted, send)
        if too_large:
            log.info("a request body over %s bytes was cut off", self.limit)

    async def _refuse(self, send: Send) -> None:
        body = (f'{{"detail":"the request body is over the limit of {self.limit} bytes '
                f'(ASTRO_API_MAX_BODY_MB)"}}').encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with FastAPI's list of errors (each with its ``loc``) and one line naming the fields."""
    errors = [{k: v for k, v in error.items() if k in ("loc", "msg", "type")} for error in exc.errors()]
    message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": errors,
                                                                                    "message": message})


def _tell(gate: CatalogGate):
    """What the replayer learns of the catalog, for the reads: an outage, or writes that reached it."""

    def on_report(report: ReplayReport) -> None:
        if report.outage:
            gate.failed()
        elif report.applied or report.dead:
            gate.succeeded()

    return on_report


def create_app(settings: Settings | None = None, *, replay: bool = True, admin_token: str | None = None) -> FastAPI:
    """The API on ``settings`` (from the environment when None). ``replay``: run the replayer in a thread beside
    the requests. ``admin_token``: the admin's token (default: ``ASTRO_API_ADMIN_TOKEN``)."""
    settings = settings or Settings.from_env()
    journal = Journal(journal_path(settings))
    replayer = Replayer(journal, settings.database_url, APPLIERS)
    gate = CatalogGate()
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        thread = None
        if replay:
            thread = threading.Thread(target=replayer.run, args=(stop,), kwargs={"on_report": _tell(gate)},
                                      name="journal-replayer", daemon=True)
            thread.start()
        yield
        stop.set()
        replayer.wake.set()
        if thread is not None:
            thread.join(timeout=10)
        replayer.close()

    app = FastAPI(title="Observatory operations API", version="1", lifespan=lifespan,
                  description="What telescopes report: executed observation units, raw data files and packages. "
                              "Critical writes are buffered in a durable journal and answered 202; reads merge the "
                              "journal and the catalog.")
    app.state.settings = settings
    app.state.journal = journal
    app.state.replayer = replayer
    app.state.gate = gate
    app.state.catalog = failing_fast_catalog(settings.database_url, connect_timeout_s=2)
    app.state.smart = SmartQuery(app.state.catalog, journal, gate)
    app.state.tokens = TokenRegistry(journal, admin_token or os.environ.get(ADMIN_TOKEN_VARIABLE) or None)
    app.state.wake_replayer = replayer.wake.set
    app.add_exception_handler(RequestValidationError, _validation_error)
    for module in (executed_obs_units, raw_data_files, raw_data_package, staging, service):
        app.include_router(module.router)
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    return app
