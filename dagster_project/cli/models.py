"""Command line for the real/bogus model registry: ``models list|show|activate`` (registered by ``cli/main.py``)."""

import argparse
import json

from dagster_project.cli.args import catalog_of, fail
from dagster_project.settings import Settings

#: the scalar fields ``models show`` prints one per line, then the JSON ones
SHOWN = ("name", "version", "id", "model_type", "is_active", "deployment_date", "model_path", "mlflow_run_id",
         "precision", "recall", "f1_score", "accuracy", "created_at")
SHOWN_JSON = ("architecture", "hyperparameters", "training_dataset", "training_metrics")
SUMMARY_CHARS = 44


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Add ``models`` to the platform's command line."""
    models = sub.add_parser("models", help="the real/bogus model registry").add_subparsers(dest="action",
                                                                                          required=True)
    listing = models.add_parser("list", help="every model version: type, architecture, scores, active, deployed")
    listing.add_argument("--name", help="only this model's versions")
    listing.set_defaults(func=cmd_models_list)
    show = models.add_parser("show", help="everything about one version (default: the active one, else the newest)")
    show.add_argument("name")
    show.add_argument("--version")
    show.set_defaults(func=cmd_models_show)
    activate = models.add_parser("activate", help="make a version the active one of its name (the active one before "
                                 "is deactivated in the same transaction)")
    activate.add_argument("name")
    activate.add_argument("version")
    activate.set_defaults(func=cmd_models_activate)


def architecture_summary(architecture: dict) -> str:
    """``key=value`` of the architecture's scalar entries, shortened to :data:`SUMMARY_CHARS`; ``-`` if none."""
    text = ", ".join(f"{k}={v}" for k, v in architecture.items() if not isinstance(v, dict | list)) or "-"
    return text if len(text) <= SUMMARY_CHARS else text[:SUMMARY_CHARS - 3] + "..."


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def cmd_models_list(args, settings: Settings) -> int:
    from dagster_project.catalog.queries import detection

    with catalog_of(settings).session() as session:
        models = detection.list_models(session, args.name)
    if args.name is not None and not models:
        return fail(f"no model named {args.name!r}")
    print(f"{'name':<20} {'version':<10} {'type':<16} {'architecture':<{SUMMARY_CHARS}} {'f1':>5} {'prec':>5} "
          f"{'recall':>6} {'active':<6} deployed")
    for m in models:
        deployed = "-" if m.deployment_date is None else m.deployment_date.isoformat(timespec="seconds")
        print(f"{m.name:<20} {m.version:<10} {m.model_type.value:<16} "
              f"{architecture_summary(m.architecture):<{SUMMARY_CHARS}} {_score(m.f1_score):>5} "
              f"{_score(m.precision):>5} {_score(m.recall):>6} {'yes' if m.is_active else 'no':<6} {deployed}")
    return 0


def _shown(value: object) -> str:
    if value is None:
        return "-"
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def cmd_models_show(args, settings: Settings) -> int:
    from dagster_project.catalog.queries import NotFound, detection

    try:
        with catalog_of(settings).session() as session:
            model = detection.get_model(session, args.name, args.version)
    except NotFound as exc:
        return fail(exc)
    for field in SHOWN:
        print(f"{field}: {_shown(getattr(model, field))}")
    for field in SHOWN_JSON:
        print(f"{field}: {json.dumps(getattr(model, field), sort_keys=True)}")
    return 0


def cmd_models_activate(args, settings: Settings) -> int:
    from dagster_project.catalog.queries import NotFound, detection

    try:
        with catalog_of(settings).session() as session:
            before = detection.active_model(session, args.name)
            before_version = None if before is None else before.version
            model = detection.activate_model(session, args.name, args.version)
    except NotFound as exc:
        return fail(exc)
    was = "" if before_version in (None, model.version) else f" (was {before_version})"
    print(f"model {model.name!r} version {model.version!r} is active{was}, deployed "
          f"{model.deployment_date.isoformat(timespec='seconds')}")
    return 0
