"""Bearer tokens with scopes: ``telescope`` (writes, and reads), ``reader`` (reads), ``admin`` (everything,
and the tokens themselves).

A token is 32 random bytes (``secrets.token_urlsafe``) behind the prefix ``astro_``; the journal keeps only
its sha256 (looked up by it), which is enough for a secret of that entropy (a slow password hash protects guessable secrets;
nothing guesses 256 random bits). A presented token is hashed and compared with ``hmac.compare_digest``; it is
never logged, and neither is its hash. The first admin is ``ASTRO_API_ADMIN_TOKEN`` (held in memory as its
hash), or a token made with ``python -m dagster_project api token create``.
"""

import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import HTTPException, Request, status

from dagster_project.journal.store import Journal

__all__ = ["Client", "SCOPES", "TokenRegistry", "hash_token", "new_token", "require"]

SCOPES = ("telescope", "reader", "admin")
#: what each action needs: one of these scopes
_ALLOWED = {"write": {"telescope", "admin"}, "read": {"telescope", "reader", "admin"}, "admin": {"admin"}}
TOKEN_PREFIX = "astro_"


@dataclass(frozen=True)
class Client:
    name: str
    scopes: frozenset[str]


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenRegistry:
    """The clients the API knows: the journal's tokens, and the admin token of the environment."""

    def __init__(self, journal: Journal, admin_token: str | None = None) -> None:
        self.journal = journal
        self._admin_hash = hash_token(admin_token) if admin_token else None

    def client_for(self, token: str) -> Client | None:
        digest = hash_token(token)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return Client("admin", frozenset({"admin"}))
        # Looked up by the hash of a 256-bit secret: the time an index lookup takes tells an attacker nothing of a
        # token it does not have (the usual scheme for API tokens); the one secret compared is compared above.
        found = self.journal.token_by_hash(digest)
        return None if found is None else Client(found.name, found.scopes)

    def create(self, name: str, scopes: Sequence[str]) -> str:
        """A new token for ``name``: the token (shown once); ValueError for an unknown scope or a taken name."""
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}, not {', '.join(sorted(unknown)) or 'none'}")
        token = new_token()
        try:
            self.journal.add_token(name, hash_token(token), scopes)
        except sqlite3.IntegrityError:
            raise ValueError(f"a token named {name!r} exists already") from None
        return token


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a bearer token is required (Authorization: Bearer ...)",
                            headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


def require(action: str):
    """A dependency that authenticates the request's bearer token and checks that its scopes allow ``action``
    (``write``, ``read``, ``admin``): 401 without a valid token, 403 without the scope."""
    allowed = _ALLOWED[action]

    def dependency(request: Request) -> Client:
        client = request.app.state.tokens.client_for(_bearer(request))
        if client is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked token",
                                headers={"WWW-Authenticate": "Bearer"})
        if not client.scopes & allowed:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"this token's scopes ({', '.join(sorted(client.scopes))}) do not allow {action}s; "
                                f"needed: one of {', '.join(sorted(allowed))}")
        return client

    return dependency
