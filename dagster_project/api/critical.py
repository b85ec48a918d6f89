"""Critical operations: writes a telescope must never see fail because the catalog database is away.

A route decorated with :func:`critical_operation` describes its write (what it stores, which entities it
creates or changes, the ids it gives them) and returns that :class:`PlannedWrite`; the decorator appends it
to the durable journal (on disk, fsync'd, before the answer) and answers ``202`` with :class:`Buffered`. The
replayer applies it to the catalog later, in order, exactly once.

Idempotency: the client's ``Idempotency-Key`` header, or a key derived from the method, path and content.
Keys are the client's own (stored as ``<client>:<key>``). The ids a write gives are derived from its key
(UUID 5), so a retry with the same key and content is the same write with the same ids (``new`` false),
and the same key with other content is a ``409``.
"""

import functools
import hashlib
import inspect
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, Header, HTTPException, Request, status

from dagster_project.api.auth import Client, require
from dagster_project.api.schemas import Buffered
from dagster_project.catalog.queries.observatory import WriteRefused
from dagster_project.journal.replayer import OUTAGES
from dagster_project.journal.store import Entity, IdempotencyConflict

__all__ = ["PlannedWrite", "WriteContext", "critical_operation", "found", "stored_record", "telescope_write", "write_directly"]

#: the namespace of the UUIDs derived from idempotency keys
_ID_NAMESPACE = uuid.UUID("5f0c6d3e-9a1b-4c53-8e0f-6a7b2d9c4e11")
MAX_KEY_CHARS = 128


@dataclass
class PlannedWrite:
    """What a critical route asks to be journaled: its payload (what the applier reads), the entities it
    creates or changes (what smart reads find it by), and the ids it gave them (answered to the client)."""

    payload: dict[str, Any]
    entities: Sequence[Entity] = ()
    ids: dict[str, Any] = field(default_factory=dict)


@dataclass
class WriteContext:
    """The client, its scoped idempotency key, and the ids derived from that key."""

    client: Client
    key: str
    _issued: int = 0

    def new_id(self) -> uuid.UUID:
        """The next id of this write: the same sequence of ids on every retry with the same key."""
        self._issued += 1
        return uuid.uuid5(_ID_NAMESPACE, f"{self.key}#{self._issued}")

    def key_is_new(self, journal) -> bool:
        """No write with this key is in the journal yet (a retry's checks against the first attempt are moot)."""
        return journal.by_key(self.key) is None

    @property
    def write_id(self) -> str:
        return str(uuid.uuid5(_ID_NAMESPACE, f"{self.key}#write"))


def _derived_key(request: Request, body: bytes) -> str:
    try:
        content = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")) if body else ""
    except ValueError:
        content = body.decode("utf-8", "replace")
    text = f"{request.method} {request.url.path}\n{content}"
    return "derived-" + hashlib.sha256(text.encode()).hexdigest()


async def telescope_write(request: Request, client: Client = Depends(require("write")),
                          idempotency_key: str | None = Header(
                              default=None, alias="Idempotency-Key", min_length=1, max_length=MAX_KEY_CHARS,
                              pattern=r"^[\x21-\x7e]+$",
                              description="the client's key of this write (printable ASCII): a retry with the same "
                                          "key is the same write; default: derived from the method, path and body"),
                          ) -> WriteContext:
    """The dependency of every critical route: an authenticated writer and the write's key."""
    key = idempotency_key or _derived_key(request, await request.body())
    return WriteContext(client=client, key=f"{client.name}:{key}")


def critical_operation(kind: str) -> Callable:
    """Make the route a buffered critical write of ``kind`` (an applier of that kind applies it).

    The route must take ``request: Request`` and ``write: WriteContext = Depends(telescope_write)`` and return
    a :class:`PlannedWrite`.
    """

    def decorate(route: Callable[..., PlannedWrite]) -> Callable[..., Buffered]:
        if not {"request", "write"} <= set(inspect.signature(route).parameters):
            raise TypeError(f"{route.__name__}: a critical operation takes request: Request and write: WriteContext "
                            "= Depends(telescope_write)")

        @functools.wraps(route)
        def buffered(*args: Any, **kwargs: Any) -> Buffered:
            write: WriteContext = kwargs["write"]
            request: Request = kwargs["request"]
            planned = route(*args, **kwargs)
            return journal_write(request, write, kind, planned)

        # FastAPI reads the route's parameters through __wrapped__; its answer is the Buffered, not the plan
        buffered.__signature__ = inspect.signature(route).replace(return_annotation=Buffered)
        return buffered

    return decorate


def journal_write(request: Request, write: WriteContext, kind: str, planned: PlannedWrite) -> Buffered:
    """Append the planned write to the journal (durably) and wake the replayer; 409 for a key reused with other
    content."""
    journal = request.app.state.journal
    try:
        entry, new = journal.append(kind=kind, payload=planned.payload, client=write.client.name,
                                    idempotency_key=write.key, response={"ids": planned.ids},
                                    entities=planned.entities, write_id=write.write_id)
    except IdempotencyConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    if new:
        request.app.state.wake_replayer()
    return Buffered(write_id=uuid.UUID(entry.write_id), idempotency_key=entry.idempotency_key.split(":", 1)[1],
                    ids=entry.response["ids"], new=new)


def write_directly(request: Request, write: Callable[[Any], Any], what: str) -> None:
    """A write that needs the catalog's present state (finalize a package, cancel a staging), done now in one
    catalog transaction: 409 with the reason the catalog refuses it, 503 while the catalog is away (``what`` names
    it in the message: try it again later)."""
    try:
        with request.app.state.catalog.session() as session:
            write(session)
    except WriteRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except OUTAGES:
        request.app.state.gate.failed()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the catalog is unreachable: {what} again later",
                            headers={"Retry-After": "5"}) from None


def found(record: Any, what: str) -> Any:
    """``record`` (from a smart read); 404 naming ``what`` when there is none."""
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {what}")
    return record


def stored_record(record: Any, what: str) -> Any:
    """``record`` (from a smart read), once the catalog has all of it: 404 when there is none, 409 while writes of
    it are still buffered (what needs its present state must wait for them)."""
    if found(record, what).buffered:
        raise HTTPException(status.HTTP_409_CONFLICT, f"{what} has writes still buffered (the catalog has not got "
                                                      "them yet): try again once they are applied")
    return record
