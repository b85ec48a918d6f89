"""The service itself: health, the journal's dead letters, and the clients' tokens (admin only)."""

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status

from dagster_project.api.auth import Client, require
from dagster_project.api.schemas import Health, TokenCreate, TokenCreated

router = APIRouter(tags=["service"])


@router.get("/health", response_model=Health, summary="Is the service up, can it reach the catalog",
            description="No token needed; `journal` counts the writes pending, applied and dead-lettered")
def health(request: Request) -> Health:
    return Health(catalog_reachable=request.app.state.gate.reachable, journal=request.app.state.journal.counts())


@router.get("/dead_letters", summary="Writes that can never apply, with the reason")
def dead_letters(request: Request, client: Client = Depends(require("admin"))) -> list[dict[str, Any]]:
    return [{"seq": e.seq, "write_id": e.write_id, "kind": e.kind, "client": e.client,
             "idempotency_key": e.idempotency_key.split(":", 1)[1], "received_at": e.received_at,
             "attempts": e.attempts, "reason": e.last_error, "payload": e.payload}
            for e in request.app.state.journal.dead_letters()]


@router.post("/tokens", status_code=201, response_model=TokenCreated, summary="Create a client token",
             description="The token is in this answer only; the service keeps its sha256")
def create_token(request: Request, body: TokenCreate, client: Client = Depends(require("admin"))) -> TokenCreated:
    try:
        token = request.app.state.tokens.create(body.name, body.scopes)
    except ValueError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return TokenCreated(name=body.name, scopes=sorted(set(body.scopes)), token=token)


@router.get("/tokens", summary="The clients' tokens (names and scopes, never the tokens)")
def list_tokens(request: Request, client: Client = Depends(require("admin"))) -> list[dict[str, Any]]:
    return request.app.state.journal.tokens()


@router.delete("/tokens/{name}", status_code=204, summary="Revoke a client's token")
def revoke_token(request: Request, name: str = Path(max_length=64), client: Client = Depends(require("admin"))
                 ) -> None:
    if not request.app.state.journal.revoke_token(name):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no active token named {name!r}")
