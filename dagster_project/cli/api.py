"""Command line of the operations API (registered by ``cli/main.py``).

``api [--host H] [--port P]``              serve it (uvicorn; 127.0.0.1:8000; OpenAPI at /openapi.json)
``api token create NAME --scope S [...]``  a client's bearer token, printed once (the journal keeps its sha256)
``api token list`` / ``api token revoke NAME``
``api journal``                            the journal's counts and its dead letters
"""

import json

from dagster_project.cli.args import fail, positive_int
from dagster_project.settings import Settings

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
SCOPES = ("telescope", "reader", "admin")


def port_number(text: str) -> int:
    import argparse

    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return value


def add_subcommands(subparsers) -> None:
    api = subparsers.add_parser("api", help="the observatory operations API (serve it; its tokens; its journal)")
    api.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    api.add_argument("--port", type=port_number, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    api.set_defaults(func=cmd_api_serve, action=None)
    api_sub = api.add_subparsers(dest="action")

    token = api_sub.add_parser("token", help="the API's client tokens")
    token_sub = token.add_subparsers(dest="token_action", required=True)
    create = token_sub.add_parser("create", help="a new token, printed once")
    create.add_argument("name")
    create.add_argument("--scope", action="append", choices=SCOPES, required=True,
                        help="telescope (write), reader (read), admin; repeat for several")
    create.set_defaults(func=cmd_token_create)
    token_sub.add_parser("list", help="names and scopes").set_defaults(func=cmd_token_list)
    revoke = token_sub.add_parser("revoke", help="revoke a token by its name")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_token_revoke)

    api_sub.add_parser("journal", help="pending, applied and dead-lettered writes; the dead letters' reasons"
                       ).set_defaults(func=cmd_journal)


def _journal(settings: Settings):
    from dagster_project.api.app import journal_path
    from dagster_project.journal.store import Journal

    return Journal(journal_path(settings))


def cmd_api_serve(args, settings: Settings) -> int:
    import uvicorn

    from dagster_project.api.app import create_app

    # one process: the replayer runs beside the requests, and the journal serialises writers itself
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", access_log=False)
    return 0


def cmd_token_create(args, settings: Settings) -> int:
    from dagster_project.api.auth import TokenRegistry

    try:
        token = TokenRegistry(_journal(settings)).create(args.name, sorted(set(args.scope)))
    except ValueError as exc:
        return fail(exc)
    print(token)
    return 0


def cmd_token_list(args, settings: Settings) -> int:
    for token in _journal(settings).tokens():
        state = f"revoked {token['revoked_at']}" if token["revoked_at"] else "active"
        print(f"{token['name']:<24} {' '.join(token['scopes']):<24} created {token['created_at']}  {state}")
    return 0


def cmd_token_revoke(args, settings: Settings) -> int:
    if not _journal(settings).revoke_token(args.name):
        return fail(f"no active token named {args.name!r}")
    print(f"revoked {args.name}")
    return 0


def cmd_journal(args, settings: Settings) -> int:
    journal = _journal(settings)
    print(json.dumps(journal.counts()))
    for entry in journal.dead_letters():
        print(f"dead  seq {entry.seq}  {entry.kind}  {entry.client}  {entry.received_at.isoformat()}  {entry.last_error}")
    return 0
