"""Command line for the candidate catalog: ``candidates export`` (registered by ``cli/main.py``)."""

import csv
import json
from pathlib import Path

from dagster_project.cli.args import catalog_of
from dagster_project.settings import Settings


def add_subcommands(sub) -> None:
    """Add ``candidates`` to the platform's command line."""
    cands = sub.add_parser("candidates", help="candidate catalog")
    cands_sub = cands.add_subparsers(dest="action", required=True)
    export = cands_sub.add_parser("export", help="one row per candidate of the current version of each raw file")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("--out", required=True)
    export.add_argument("--all-versions", action="store_true",
                        help="also candidates of superseded (or later quarantined) file versions and archived "
                             "observations; the raw_file_version, raw_file_status and observation_status columns "
                             "tell them apart")
    export.set_defaults(func=cmd_candidates_export)



EXPORT_COLUMNS = ("raw_file", "raw_file_version", "raw_file_status", "observation_id", "observation_status",
                  "ra", "dec", "x", "y", "snr", "flux", "flux_error", "flags")


def _export_row(row: dict) -> dict:
    return {"raw_file": row["original_name"], **{k: row[k] for k in EXPORT_COLUMNS if k != "raw_file"}}


def cmd_candidates_export(args, settings: Settings) -> int:
    from dagster_project.catalog import queries

    with catalog_of(settings).session() as session:
        rows = queries.candidates_for_export(session, all_versions=args.all_versions)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "json":
        out.write_text(json.dumps([_export_row(row) for row in rows], indent=1, default=str))
    else:
        with out.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=EXPORT_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({**_export_row(row), "flags": "|".join(row["flags"])})
    which = "of every file version" if args.all_versions else "of current file versions (--all-versions: all)"
    print(f"wrote {len(rows)} candidates {which} to {out}")
    return 0
