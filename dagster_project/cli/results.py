"""Command line for observation requests and their results: ``requests add|cancel``, ``results status|backfill``,
``references rebuild``."""

import argparse
import sys
from collections import Counter
from pathlib import Path

from dagster_project.cli.args import catalog_of, fail
from dagster_project.settings import Settings



def cmd_requests_add(args, settings: Settings) -> int:
    from dagster_project.products.requests import InvalidRequest, load_request_file, submit_requests

    try:
        created = submit_requests(catalog_of(settings), load_request_file(Path(args.file)), settings.survey)
    except InvalidRequest as exc:
        return fail(exc)
    for name, n in created:
        print(f"request {name!r}: {n} result(s)")
    return 0


def cmd_requests_cancel(args, settings: Settings) -> int:
    from dagster_project.catalog.queries import cancel_request, find_request

    with catalog_of(settings).session() as session:
        request = find_request(session, args.name)
        if request is None:
            print(f"error: no request named {args.name!r}", file=sys.stderr)
            return 2
        n = cancel_request(session, request)
    print(f"request {args.name!r} canceled; {n} result(s) canceled")
    return 0


def print_results_status(settings: Settings) -> None:
    from dagster_project.catalog.queries import results_status_table, unmatched_observations

    with catalog_of(settings).session() as session:
        rows = results_status_table(session)
        unmatched = [o.observation_id for o in unmatched_observations(session)]
    by_status = Counter((r["fulfillment"], r["products"]) for r in rows)
    print(f"\nresults by fulfillment and product status ({len(rows)} results)")
    print(f"  {'fulfillment':<22} {'products':<10} {'count':>5}")
    for (fulfillment, products), n in sorted(by_status.items()):
        print(f"  {fulfillment:<22} {products:<10} {n:>5}")
    if rows:
        print(f"\n  {'request':<24} {'cell':<10} {'fulfillment':<20} {'products':<9} {'rev':>3} {'built':>5}  observation")
        for r in rows:
            built = "-" if r["built"] is None else r["built"]
            print(f"  {r['request']:<24} {r['cell']:<10} {r['fulfillment']:<20} {r['products']:<9} "
                  f"{r['revision']:>3} {built:>5}  {r['observation'] or '-'}")
    if unmatched:
        print(f"\n{len(unmatched)} frame(s) matched no request: " + ", ".join(unmatched))


def cmd_results_status(args, settings: Settings) -> int:
    print_results_status(settings)
    return 0


def cmd_results_backfill(args, settings: Settings) -> int:
    from dagster_project.catalog.queries import find_request, results_for_backfill
    from dagster_project.cli.backfill import RESULTS_BACKFILL, run_backfill_command

    catalog = catalog_of(settings)
    try:
        with catalog.session() as session:
            if args.request is not None and find_request(session, args.request) is None:
                raise ValueError(f"no request named {args.request!r}")
            rows = [(str(result.uid), request, result.cell, result.data_product_status.value, observation)
                    for result, request, observation in results_for_backfill(
                        session, request_name=args.request, statuses=args.status or ())]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    selection = {key: value for key, value in (("request", args.request), ("status", args.status)) if value}
    return run_backfill_command(args, settings, catalog, RESULTS_BACKFILL, rows, selection)


def cmd_references_rebuild(args, settings: Settings) -> int:
    from dagster_project.cli.runner import rebuild_reference

    try:
        report = rebuild_reference(args.field_band, settings)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_results_status(settings)
    return 1 if report.failed else 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    requests = sub.add_parser("requests", help="observation requests").add_subparsers(dest="action", required=True)
    add = requests.add_parser("add", help="add the request(s) of a YAML file and expand them into results")
    add.add_argument("file")
    add.set_defaults(func=cmd_requests_add)
    cancel = requests.add_parser("cancel", help="cancel a request and its open results")
    cancel.add_argument("name")
    cancel.set_defaults(func=cmd_requests_cancel)

    results = sub.add_parser("results", help="observation results").add_subparsers(dest="action", required=True)
    results.add_parser("status", help="results by fulfillment and product status").set_defaults(
        func=cmd_results_status)
    backfill = results.add_parser("backfill", help="(re)build results' products as a Dagster backfill run by "
                                  "the daemon (e.g. after a code change, or the failed ones)")
    backfill.add_argument("--request", help="only this request's results")
    backfill.add_argument("--status", action="append",
                          help="a product status: PENDING, STALE, BLOCKED, FAILED or READY; repeatable; "
                          "default: all of them (results with a frame, not being built, not SKIPPED)")
    backfill.add_argument("--dry-run", action="store_true", help="list what would run, launch nothing")
    backfill.add_argument("--detach", action="store_true", help="launch and return; the daemon carries on")
    backfill.set_defaults(func=cmd_results_backfill)

    references = sub.add_parser("references", help="reference images").add_subparsers(dest="action", required=True)
    rebuild = references.add_parser("rebuild", help="choose a field's reference again (a new version) and re-run "
                                    "what it made stale")
    rebuild.add_argument("field_band", help="e.g. F001-r")
    rebuild.set_defaults(func=cmd_references_rebuild)
