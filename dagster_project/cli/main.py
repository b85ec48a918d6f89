"""Command line: ``astro-platform <command>``, or ``python -m dagster_project <command>`` (see ``--help``)."""

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

from dagster_project.cli import api as cli_api, backfill as cli_backfill, candidates as cli_candidates
from dagster_project.cli import models as cli_models, operations as cli_operations, results as cli_results
from dagster_project.cli.args import PROG, Parser, catalog_of, fail, image_size, iso_date, non_negative_float, non_negative_int, positive_int
from dagster_project.settings import Settings



def cmd_simulate_night(args, settings: Settings) -> int:
    """A new night each time unless --night and --seed say which: the first date from today on with no frames
    in the folder or the raw archive, and a seed from the clock; the truth table goes beside the folder."""
    from datetime import date

    from dagster_project.simulation.artifacts import ARTIFACT_RICH
    from dagster_project.simulation.night import free_night, simulate_night
    from dagster_project.store import raw_dir

    out = Path(args.out).expanduser().resolve()
    night = args.night or free_night([out, raw_dir(settings.store_dir)], date.today()).isoformat()
    seed = args.seed if args.seed is not None else time.time_ns() // 1000 % 2**31
    truth = Path(args.truth) if args.truth else out.parent / "truth" / f"{out.name}-{night}-seed{seed}.csv"
    try:
        simulated = simulate_night(
            out, n_fields=args.fields, n_epochs=args.epochs, size=args.size, bands=tuple(args.bands),
            n_bias=args.bias, n_flats=args.flats, transients_per_frame=args.transients, seed=seed,
            night=night, truth_path=truth, artifacts=ARTIFACT_RICH if args.artifacts == "rich" else None,
            variable_fraction=args.variable_fraction,
        )
    except ValueError as exc:  # e.g. an unknown band or a fraction over 1 (checked before anything is written)
        return fail(exc)
    print(json.dumps(simulated.summary, indent=2, default=str))
    return 0


def cmd_process(args, settings: Settings) -> int:
    from dagster_project.cli.runner import process_folder

    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"error: {folder} is not a folder", file=sys.stderr)
        return 2
    from dagster_project.catalog.queries import OperationActive

    try:
        report = process_folder(folder, settings, wait=args.wait)
    except OperationActive as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_status(settings)
    if report.waiting_files:
        print(f"{len(report.waiting_files)} file(s) were still being written and were left for later "
              "(use --wait to wait for them)")
    if report.failed:
        print(f"{len(report.failed)} run(s) failed: " + ", ".join(f"{r.job_name}[{r.partition_key}]" for r in report.failed))
        return 1
    return 0


def cmd_demo(args, settings: Settings) -> int:
    from dagster_project.catalog.queries import find_request
    from dagster_project.products.requests import RequestSpec, submit_requests
    from dagster_project.cli.runner import process_folder, rebuild_reference
    from dagster_project.simulation.night import load_truth, simulate_night

    # a short debounce so the demo shows a rebuild within seconds (production default: ASTRO_PRODUCT_QUIET=60)
    settings = dataclasses.replace(settings, product_quiet_seconds=args.debounce)
    folder = settings.home / "demo-night"
    print(f"simulating a night of {args.fields} fields x {args.epochs} epochs at {args.size}x{args.size} into {folder}")
    truth_path = settings.home / "truth" / "demo-night.csv"
    night = simulate_night(folder, n_fields=args.fields, n_epochs=args.epochs, size=args.size, seed=args.seed,
                           truth_path=truth_path)
    specs = [RequestSpec(name=f"demo-{field}-r", program="demo", target_name=f"{field} centre", ra=pos["ra"],
                         dec=pos["dec"], filter_band="r", exposure_time=60, n_epochs=args.epochs, cadence_hours=1.0)
             for field, pos in night.summary["fields"].items()]
    with catalog_of(settings).session() as session:
        new_specs = [s for s in specs if find_request(session, s.name) is None]
    if new_specs:
        submit_requests(catalog_of(settings), new_specs, settings.survey)
        print(f"requests: {', '.join(s.name for s in new_specs)} ({args.epochs} epochs each)")
    print(f"processing it (Dagster instance: {os.environ['DAGSTER_HOME']}, catalog: {settings.database_url_shown})")
    print("Dagster's own log is shown from INFO up; each run's full event log is in that instance "
          "(`make ui`, Runs; or `astro-platform runs tail RUN_ID`)")
    report = process_folder(folder, settings, wait=True, launched_by="demo")
    _print_status(settings)
    _print_recovery(settings, load_truth(truth_path))
    cli_results.print_results_status(settings)
    first_field = f"{next(iter(night.summary['fields']))}-r"
    print(f"\nre-processing field {first_field}: a new reference version makes exactly its results stale")
    report.runs += rebuild_reference(first_field, settings, launched_by="demo").runs
    cli_results.print_results_status(settings)
    print("\nopen the Dagster UI on this instance with:  make ui")
    return 1 if report.failed else 0


def _print_status(settings: Settings) -> None:
    from dagster_project.catalog import queries

    with catalog_of(settings).session() as session:
        summary = queries.catalog_summary(session)
    print("\ncatalog summary")
    for section, counts in summary.items():
        if isinstance(counts, dict):
            print(f"  {section:<14} " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        else:
            print(f"  {section:<14} {counts}")


def _print_recovery(settings: Settings, truth: list[dict]) -> None:
    from dagster_project.catalog import queries
    from dagster_project.simulation.recovery import match_injections

    with catalog_of(settings).session() as session:
        detected = [dict(row, file=row["original_name"], is_negative="negative" in row["flags"])
                    for row in queries.candidates_for_export(session)]
    report = match_injections(truth, detected)
    files_with_injections = {row["file"] for row in truth}
    positives = [d for d in detected if not d["is_negative"] and d["file"] in files_with_injections]
    print(f"\ninjected transients recovered: {report.n_recovered}/{report.n_injected}; "
          f"with S/N >= {report.bright_snr:g}: {report.n_bright_recovered}/{report.n_bright} "
          f"({report.bright_fraction:.0%})")
    print(f"positive candidates matching no injection: {len(positives) - report.n_recovered} "
          f"in {len(files_with_injections)} frame(s) with injections")


def cmd_status(args, settings: Settings) -> int:
    print(f"catalog: {settings.database_url_shown}")
    _print_status(settings)
    return 0


def cmd_migrate(args, settings: Settings) -> int:
    catalog_of(settings)
    print(f"catalog at {settings.database_url_shown} is at the latest schema")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate-night", help="write a simulated night of raw FITS frames")
    sim.add_argument("--out", required=True, help="folder to write into (e.g. the landing folder)")
    sim.add_argument("--fields", type=positive_int, default=2)
    sim.add_argument("--epochs", type=positive_int, default=3)
    sim.add_argument("--size", type=image_size, default=2048, help="data section is size x size pixels")
    sim.add_argument("--bands", nargs="+", default=["r"])
    sim.add_argument("--bias", type=non_negative_int, default=5, help="bias frames (0 for a night without calibration)")
    sim.add_argument("--flats", type=non_negative_int, default=5, help="flat frames per band")
    sim.add_argument("--transients", type=non_negative_int, default=10, help="injected transients per science frame")
    sim.add_argument("--seed", type=int, help="the same seed and night write the same bytes (default: from the clock)")
    sim.add_argument("--night", type=iso_date, help="local date at the start of the night, YYYY-MM-DD (default: "
                     "the first from today on with no frames in --out or in the raw archive)")
    sim.add_argument("--truth", help="where the table of injected transients goes "
                     "(default: <out>/../truth/<out name>-<night>-seed<seed>.csv, outside the landing folder)")
    sim.add_argument("--artifacts", choices=["none", "rich"], default="none", help="rich: trails, flickering "
                     "columns, hot pixels, odd PSFs, distortions, ghosts, with their truth beside the truth table")
    sim.add_argument("--variable-fraction", type=non_negative_float, default=0.0, metavar="F",
                     help="share (0-1) of the transients that are variable stars on stars of the field")
    sim.set_defaults(func=cmd_simulate_night)

    proc = sub.add_parser("process", help="ingest a folder of raw FITS frames and run the pipeline to completion")
    proc.add_argument("folder")
    proc.add_argument("--wait", action="store_true", help="wait for files still being written")
    proc.set_defaults(func=cmd_process)

    demo = sub.add_parser("demo", help="simulate a night and process it end to end")
    demo.add_argument("--fields", type=positive_int, default=2)
    demo.add_argument("--epochs", type=positive_int, default=3)
    demo.add_argument("--size", type=image_size, default=2048)
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--debounce", type=non_negative_float, default=5.0, help="product rebuild quiet period, seconds")
    demo.set_defaults(func=cmd_demo)

    cli_candidates.add_subcommands(sub)

    sub.add_parser("status", help="counts of files, observations and candidates").set_defaults(func=cmd_status)
    sub.add_parser("migrate", help="bring the catalog schema up to date").set_defaults(func=cmd_migrate)
    cli_results.add_subcommands(sub)
    cli_backfill.add_subcommands(sub)
    cli_operations.add_subcommands(sub)
    cli_api.add_subcommands(sub)
    cli_models.add_subcommands(sub)
    return parser


def ensure_dagster_home(settings: Settings) -> None:
    """Point Dagster at the project-local instance unless DAGSTER_HOME says otherwise."""
    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home))
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    template = Path(__file__).resolve().parent.parent / "deploy" / "dagster.yaml"
    if not (home / "dagster.yaml").exists() and template.exists():
        shutil.copy(template, home / "dagster.yaml")


#: (command, action) that start from nothing or add to what is there; every other command reads existing state
MAKES_STATE = {("process", None), ("demo", None), ("migrate", None), ("requests", "add")}
#: commands that touch neither the catalog nor the Dagster instance
NO_STATE = {("simulate-night", None), ("api", None), ("api", "token"), ("api", "journal")}


def missing_state(settings: Settings) -> str | None:
    """Why there is no catalog to read, saying where it was looked for; None if there is one (or it is a server)."""
    url = settings.database_url
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url.removeprefix("sqlite:///")).expanduser()
    if path.is_file():
        return None
    how = "from DATABASE_URL" if os.environ.get("DATABASE_URL") else f"ASTRO_HOME={settings.home}; {settings.home_source}"
    return (f"no catalog at {path} ({how}): run `{PROG} process FOLDER` or `{PROG} demo` first, "
            "or set ASTRO_HOME to the folder that holds catalog.sqlite")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if settings.difference_overrides:  # the science libraries it checks against load only when it is set
            from dagster_project.resources import difference_config

            difference_config(settings)  # a bad ASTRO_DIFFERENCE_PARAMS field: one line naming it, not a traceback
    except ValueError as exc:  # a setting of the environment that is not a number, or out of range
        return fail(exc)
    command = (args.command, getattr(args, "action", None))
    if command not in NO_STATE:
        # a command that reads state never creates an empty catalog (or instance) where there was none
        problem = None if command in MAKES_STATE else missing_state(settings)
        if problem:
            return fail(problem)
        ensure_dagster_home(settings)
    return args.func(args, settings)
