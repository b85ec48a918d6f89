"""Every setting of the platform, read from the environment in one place.

=============================  ==========================================  =================================
variable                       meaning                                     default
=============================  ==========================================  =================================
``ASTRO_HOME``                 root of all local state                     ``var/`` of the source checkout
                                                                           (editable install), else ``./var``
``ASTRO_LANDING_DIR``          folder the telescopes write raw FITS into   ``$ASTRO_HOME/landing``
``ASTRO_STORE_DIR``            raw archive, masters, products              ``$ASTRO_HOME/store``
``ASTRO_QUARANTINE_DIR``       rejected files, with a ``.reason`` file     ``$ASTRO_HOME/quarantine``
``DATABASE_URL``               catalog (SQLAlchemy URL)                    ``sqlite:///$ASTRO_HOME/catalog.sqlite``
``DAGSTER_HOME``               Dagster instance (``dagster.yaml``)         ``$ASTRO_HOME/dagster``
``ASTRO_SURVEY``               survey name new frames are filed under      ``local``
``ASTRO_INSTRUMENTS_FILE``     YAML of per-instrument header keywords      (built-in standard keywords)
``ASTRO_SENSOR_INTERVAL``      least seconds between two ticks of a sensor ``1``: a tick on every loop of
                               (the daemon's loop comes round every 5 s;   the daemon (every 5 s)
                               at 5 a tick that comes a moment early is
                               skipped and sensors tick every 10 s)
``ASTRO_BOOKKEEPING_INTERVAL`` least seconds between two ticks of the      ``15``: every third loop
                               ledger and product-rebuild sensors (what     of the daemon
                               they do waits for runs or a debounce, not
                               for a frame: ticking them less often leaves
                               the cores to the frames)
``ASTRO_SETTLE_SECONDS``       a file must be unchanged this long          ``1``
``ASTRO_TRUNCATED_AFTER``      an incomplete file unchanged this long is   ``300``
                               quarantined as truncated (seconds)
``ASTRO_MAX_FILE_MB``          larger files are quarantined                ``4096``
``ASTRO_MAX_HDUS``             files with more HDUs are quarantined        ``16``
``ASTRO_DIFFERENCE_PARAMS``    JSON object overriding any field of         ``{}``: every field its default in
                               ``science.difference.DifferenceParams``     ``DifferenceParams``
                               (the difference and detection parameters),
                               e.g. ``{"threshold": 4.5, "min_matches": 8}``;
                               a name that is not a field, or a value of
                               the wrong type, stops the code location
                               from loading, with an error naming it
``ASTRO_DETECTION_THRESHOLD``  S_corr threshold for candidates (sigma): a  ``DifferenceParams.threshold``
                               shorthand for ``ASTRO_DIFFERENCE_PARAMS``'  (``5``)
                               ``threshold`` (both, disagreeing: an error)
``ASTRO_DETECT_COSMIC_RAYS``   ``0``: calibration does not look for        ``1``
                               cosmic rays (L.A.Cosmic)
``ASTRO_MAX_CANDIDATES``       candidates per frame above which the        ``500``
                               ``candidate_count_sane`` check fails
``ASTRO_SCORR_STD_RANGE``      the range, ``low,high``, of the robust std  ``0.8,1.25``
                               of S_corr inside which a difference's
                               ``scorr_std_near_one`` check passes
``ASTRO_REFERENCE_MIN_PSF_STARS`` fewest stars a reference's PSF is      ``10``
                               fitted on for its ``usable_for_differences``
                               check to pass
``ASTRO_PRODUCT_QUIET``        product rebuild debounce: seconds after     ``60``
                               the last upstream change
``ASTRO_PRODUCT_MAX_DELAY``    ... but at most this long after the first   ``600``
``ASTRO_PRODUCT_ATTEMPTS``     builds of a product before it is left       ``5``
                               failed for a person
``ASTRO_PRODUCT_RETRY_BACKOFF`` seconds before a failed product is built  ``30``
                               again (doubling each time)
``ASTRO_PRODUCT_BUILD_TIMEOUT`` seconds after which a product still       ``3600``
                               building is presumed lost and rebuilt
``ASTRO_BACKFILL_BATCH``       partitions per run of a backfill            ``8``
``ASTRO_PROMPT_RUNS``          runs the new frames one sensor tick finds   ``2``
                               share (the prompt lane's limit in
                               ``deploy/dagster.yaml``)
``ASTRO_BACKGROUND_NICENESS``  the CPU priority (``nice``, 0-19) of a run   ``19``
                               worker whose run remakes what exists (the
                               redo lane): a frame that lands gets the
                               cores first; 0 leaves it alone
``ASTRO_RETRY_ATTEMPTS``       attempts at a calibration, reference or     ``4``
                               difference whose run failed or died
``ASTRO_RETRY_BACKOFF``        seconds before the first retry (doubling    ``30``
                               each time)
``ASTRO_RETRY_MAX_BACKOFF``    ... but never more than this                ``900``
``ASTRO_ALLOW_UNCALIBRATED``   ``1``: a science frame with no master bias  ``0`` (such frames are blocked)
                               or flat on any night is processed without
                               them, recorded as uncalibrated
``ASTRO_REFERENCE_FRAMES``     most frames co-added into a reference       ``20``
                               (1: the most informative single frame)
``ASTRO_REFERENCE_REBUILD_GAIN`` rebuild a reference when frames it does  ``0.1``
                               not hold would make it this many
                               magnitudes deeper
``ASTRO_REFERENCE_WINDOW_DAYS``  only frames within this many days of a   (all frames)
                               field's first go into its reference
``ASTRO_EXECUTOR``             where a run's steps execute: in_process     ``in_process`` (as before)
                               (the run worker's process), multiprocess
                               (a process per step) or celery (Celery
                               workers: ``deploy/celery.yaml``,
                               docs/scaling.md)
``ASTRO_CELERY_BROKER``        the Celery broker the steps are sent to     ``pyamqp://guest@127.0.0.1:5672//``
``ASTRO_CELERY_BACKEND``       the Celery result backend                   ``rpc://`` (through the broker)
``ASTRO_CELERY_QUEUE``         the broker queue steps go to (the workers   ``dagster``
                               listen on it: ``make workers``)
``ASTRO_STEP_RETRIES``         with multiprocess or celery: retries of a   ``2``
                               failed step within its run (RetryPolicy)
``ASTRO_API_JOURNAL``          the operations API's durable journal of     ``$ASTRO_HOME/api/journal.sqlite``
                               critical writes (and its clients' tokens)
``ASTRO_API_ADMIN_TOKEN``      a bearer token with the admin scope (read   (none: make tokens with
                               by the API at start, kept as its hash)      ``api token create``)
``ASTRO_API_MAX_BODY_MB``      larger requests are refused (413)           ``8``
``ASTRO_PACKAGE_MAX_GB``       most a raw data package may hold (declared  ``50``
                               file sizes)
``ASTRO_MISSING_AFTER``        a file registered through the API and not   ``3600``
                               landed this many seconds later is missing
``ASTRO_STAGING_DIR``          staging requests copy files below it        ``$ASTRO_HOME/staging``
=============================  ==========================================  =================================
"""

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the variable holding overrides of the difference parameters (``DifferenceParams``), a JSON object
DIFFERENCE_PARAMS_VARIABLE = "ASTRO_DIFFERENCE_PARAMS"

#: ASTRO_SENSOR_INTERVAL's default: a tick on every loop of the daemon, which comes round every 5 s (at 5, a
#: tick that came a moment early was skipped, and sensors ticked every 10 s: benchmarks/latency.py)
SENSOR_INTERVAL = 1
#: ASTRO_BOOKKEEPING_INTERVAL's default: the ledger and product-rebuild sensors every third loop of the daemon
#: (each tick of a sensor costs the daemon and the code server 50-150 ms of CPU even when there is nothing to do)
BOOKKEEPING_INTERVAL = 15

#: ASTRO_EXECUTOR's values: where a run's steps execute (pipeline/jobs.py)
EXECUTORS = ("in_process", "multiprocess", "celery")


def _path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


def _source_checkout() -> Path | None:
    """The project folder this package was installed from in editable mode (or is run from), else None."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    try:
        return root if 'name = "dagster_project"' in pyproject.read_text() else None
    except OSError:
        return None


def default_home() -> tuple[Path, str]:
    """Where local state lives when ``ASTRO_HOME`` is not set, and a phrase saying why there.

    The source checkout's ``var/`` for an editable install, wherever the command is run from
    (it is where ``make demo`` and ``make ui`` keep it); for an installed package, ``./var``.
    """
    checkout = _source_checkout()
    if checkout is not None:
        return checkout / "var", f"ASTRO_HOME is not set: var/ of the source checkout {checkout}"
    return Path.cwd() / "var", "ASTRO_HOME is not set: var/ of the current folder"


def _number(name: str, default: float | None, kind: type = float, minimum: float | None = None,
            maximum: float | None = None) -> float | None:
    """The environment variable ``name`` as a ``kind`` (``default`` when unset, None too); ValueError naming the
    variable if it is not one."""
    text = os.environ.get(name)
    if text is None or text == "":
        return None if default is None else kind(default)
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, not {text!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum:g}, not {text!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum:g}, not {text!r}")
    return value


def _range(name: str, default: tuple[float, float]) -> tuple[float, float]:
    """``low,high`` (two numbers, low < high) from the environment variable ``name``; ValueError naming it."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{name} must be two numbers, low,high, not {text!r}") from None
    if not low < high:
        raise ValueError(f"{name} must have low < high, not {text!r}")
    return low, high


def _flag(name: str, default: bool = False) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` (any case); ValueError naming the variable."""
    text = os.environ.get(name, "").strip().lower()
    if text == "":
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 1 or 0 (true or false), not {os.environ[name]!r}")


def _json_object(name: str) -> dict[str, Any]:
    """The environment variable ``name`` as a JSON object (``{}`` when unset); ValueError naming the variable."""
    text = os.environ.get(name, "").strip()
    if text == "":
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object such as '{{\"threshold\": 4.5}}', not {text!r}")
    return value


def _choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """One of ``choices`` from the environment variable ``name`` (any case); ValueError naming the variable."""
    text = os.environ.get(name, "").strip().lower() or default
    if text not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {os.environ[name]!r}")
    return text


def _positive_int(name: str, default: int) -> int:
    value = int(_number(name, default, int))
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value}")
    return value


@dataclass(frozen=True)
class Settings:
    home: Path
    landing_dir: Path
    store_dir: Path
    quarantine_dir: Path
    database_url: str
    dagster_home: Path
    survey: str
    instruments_file: Path | None
    #: the sensors' minimum_interval_seconds (ASTRO_SENSOR_INTERVAL)
    sensor_interval_seconds: int
    #: the ledger and product-rebuild sensors' minimum_interval_seconds (ASTRO_BOOKKEEPING_INTERVAL)
    bookkeeping_interval_seconds: int
    settle_seconds: float
    truncated_after_seconds: float
    max_file_bytes: int
    max_hdus: int
    #: ASTRO_DETECTION_THRESHOLD: the difference parameters' ``threshold`` (None: DifferenceParams' default)
    detection_threshold: float | None = None
    #: ASTRO_DIFFERENCE_PARAMS: overrides of DifferenceParams' defaults, by field name (checked by the resources)
    difference_params: Mapping[str, Any] = field(default_factory=dict)
    detect_cosmic_rays: bool = True
    #: more candidates than this in one frame fail its candidate_count_sane check
    max_candidates_per_frame: int = 500
    #: a difference's S_corr robust std outside this range fails its scorr_std_near_one check
    scorr_std_range: tuple[float, float] = (0.8, 1.25)
    #: a reference whose PSF is fitted on fewer stars fails its usable_for_differences check
    reference_min_psf_stars: int = 10
    #: product rebuilds (``catalog.queries.RebuildPolicy``): debounce, attempts, retry backoff, presumed-lost time
    product_quiet_seconds: float = 60.0
    product_max_delay_seconds: float = 600.0
    product_max_attempts: int = 5
    product_retry_backoff_seconds: float = 30.0
    product_build_timeout_seconds: float = 3600.0
    backfill_batch_size: int = 8
    #: the new frames one raw-arrival tick finds go in at most this many runs (sensors/raw_arrival.batched)
    prompt_runs: int = 2
    #: the nice value a run worker of the redo lane gives itself (resources.RunPriorityResource; 0: none)
    background_niceness: int = 19
    #: automatic retries of failed or interrupted work (``catalog.queries.RetryPolicy``)
    retry_max_attempts: int = 4
    retry_backoff_seconds: float = 30.0
    retry_max_backoff_seconds: float = 900.0
    #: the user's explicit choice to process frames without any master bias or flat (recorded as uncalibrated)
    allow_uncalibrated: bool = False
    #: references (references/policy.py): frames co-added, rebuild gain (mag), window (days; None: all frames)
    reference_max_frames: int = 20
    reference_rebuild_gain_mag: float = 0.1
    reference_window_days: float | None = None
    #: where a run's steps execute (``EXECUTORS``); the Celery broker, result backend and queue for ``celery``
    executor: str = "in_process"
    celery_broker: str = "pyamqp://guest@127.0.0.1:5672//"
    celery_backend: str = "rpc://"
    celery_queue: str = "dagster"
    #: Dagster's retries of a failed step within its run (multiprocess and celery executors only)
    step_retries: int = 2
    #: the operations API (dagster_project/api): its journal, request size limit, package size limit, and when a
    #: registered file that has not landed is missing
    api_journal: Path | None = None
    api_max_body_bytes: int = 8 * 2**20
    package_max_bytes: int = 50 * 10**9
    missing_after_seconds: float = 3600.0
    #: where staging requests copy files to (each below it, in its destination folder)
    staging_dir: Path | None = None
    #: how ``home`` was chosen, for messages that say where state was looked for
    home_source: str = "given"

    def __post_init__(self) -> None:
        given = self.difference_params.get("threshold")
        if self.detection_threshold is not None and given is not None and given != self.detection_threshold:
            raise ValueError(f"ASTRO_DETECTION_THRESHOLD ({self.detection_threshold:g}) and the threshold of "
                             f"{DIFFERENCE_PARAMS_VARIABLE} ({given!r}) disagree: give one of them")

    @property
    def difference_overrides(self) -> dict[str, Any]:
        """What differs from DifferenceParams' defaults: ASTRO_DIFFERENCE_PARAMS, with ASTRO_DETECTION_THRESHOLD
        as its ``threshold``."""
        overrides = dict(self.difference_params)
        if self.detection_threshold is not None:
            overrides["threshold"] = self.detection_threshold
        return overrides

    @property
    def database_url_shown(self) -> str:
        """The catalog URL as it may be printed or logged: any password masked."""
        from sqlalchemy import make_url  # here: the settings module stays free of heavy imports

        try:
            return make_url(self.database_url).render_as_string(hide_password=True)
        except Exception:  # not a URL SQLAlchemy parses: say nothing of it rather than leak it
            return "<unparsable DATABASE_URL>"

    @classmethod
    def from_env(cls) -> "Settings":
        fallback, fallback_source = default_home()
        home = _path("ASTRO_HOME", fallback)
        home_source = "ASTRO_HOME" if os.environ.get("ASTRO_HOME") else fallback_source
        instruments = os.environ.get("ASTRO_INSTRUMENTS_FILE")
        if instruments:  # a bad profile stops every command at once, naming the file, instrument and key
            from dagster_project.ingest.instruments import InstrumentRegistry

            try:
                InstrumentRegistry.from_yaml(Path(instruments).expanduser())
            except ValueError as exc:
                raise ValueError(f"ASTRO_INSTRUMENTS_FILE: {exc}") from None
        return cls(
            home=home,
            landing_dir=_path("ASTRO_LANDING_DIR", home / "landing"),
            store_dir=_path("ASTRO_STORE_DIR", home / "store"),
            quarantine_dir=_path("ASTRO_QUARANTINE_DIR", home / "quarantine"),
            database_url=os.environ.get("DATABASE_URL") or f"sqlite:///{home / 'catalog.sqlite'}",
            dagster_home=_path("DAGSTER_HOME", home / "dagster"),
            survey=os.environ.get("ASTRO_SURVEY", "local"),
            instruments_file=Path(instruments).expanduser() if instruments else None,
            sensor_interval_seconds=_positive_int("ASTRO_SENSOR_INTERVAL", SENSOR_INTERVAL),
            bookkeeping_interval_seconds=_positive_int("ASTRO_BOOKKEEPING_INTERVAL", BOOKKEEPING_INTERVAL),
            settle_seconds=_number("ASTRO_SETTLE_SECONDS", 1, minimum=0),
            truncated_after_seconds=_number("ASTRO_TRUNCATED_AFTER", 300, minimum=0),
            max_file_bytes=int(_number("ASTRO_MAX_FILE_MB", 4096, minimum=0) * 2**20),
            max_hdus=_positive_int("ASTRO_MAX_HDUS", 16),
            detection_threshold=_number("ASTRO_DETECTION_THRESHOLD", None, minimum=0),
            difference_params=_json_object(DIFFERENCE_PARAMS_VARIABLE),
            detect_cosmic_rays=_flag("ASTRO_DETECT_COSMIC_RAYS", cls.detect_cosmic_rays),
            max_candidates_per_frame=_positive_int("ASTRO_MAX_CANDIDATES", cls.max_candidates_per_frame),
            scorr_std_range=_range("ASTRO_SCORR_STD_RANGE", cls.scorr_std_range),
            reference_min_psf_stars=_positive_int("ASTRO_REFERENCE_MIN_PSF_STARS", cls.reference_min_psf_stars),
            product_quiet_seconds=_number("ASTRO_PRODUCT_QUIET", cls.product_quiet_seconds, minimum=0),
            product_max_delay_seconds=_number("ASTRO_PRODUCT_MAX_DELAY", cls.product_max_delay_seconds, minimum=0),
            product_max_attempts=_positive_int("ASTRO_PRODUCT_ATTEMPTS", cls.product_max_attempts),
            product_retry_backoff_seconds=_number("ASTRO_PRODUCT_RETRY_BACKOFF", cls.product_retry_backoff_seconds,
                                                  minimum=0),
            product_build_timeout_seconds=_number("ASTRO_PRODUCT_BUILD_TIMEOUT", cls.product_build_timeout_seconds,
                                                  minimum=0),
            backfill_batch_size=_positive_int("ASTRO_BACKFILL_BATCH", cls.backfill_batch_size),
            prompt_runs=_positive_int("ASTRO_PROMPT_RUNS", cls.prompt_runs),
            background_niceness=int(_number("ASTRO_BACKGROUND_NICENESS", cls.background_niceness, int, minimum=0,
                                            maximum=19)),
            retry_max_attempts=_positive_int("ASTRO_RETRY_ATTEMPTS", cls.retry_max_attempts),
            retry_backoff_seconds=_number("ASTRO_RETRY_BACKOFF", cls.retry_backoff_seconds, minimum=0),
            retry_max_backoff_seconds=_number("ASTRO_RETRY_MAX_BACKOFF", cls.retry_max_backoff_seconds, minimum=0),
            allow_uncalibrated=_flag("ASTRO_ALLOW_UNCALIBRATED", cls.allow_uncalibrated),
            reference_max_frames=_positive_int("ASTRO_REFERENCE_FRAMES", cls.reference_max_frames),
            reference_rebuild_gain_mag=_number("ASTRO_REFERENCE_REBUILD_GAIN", cls.reference_rebuild_gain_mag,
                                               minimum=0),
            reference_window_days=_number("ASTRO_REFERENCE_WINDOW_DAYS", None, minimum=0),
            executor=_choice("ASTRO_EXECUTOR", EXECUTORS, cls.executor),
            celery_broker=os.environ.get("ASTRO_CELERY_BROKER") or cls.celery_broker,
            celery_backend=os.environ.get("ASTRO_CELERY_BACKEND") or cls.celery_backend,
            celery_queue=os.environ.get("ASTRO_CELERY_QUEUE") or cls.celery_queue,
            step_retries=int(_number("ASTRO_STEP_RETRIES", cls.step_retries, int, minimum=0)),
            api_journal=_path("ASTRO_API_JOURNAL", home / "api" / "journal.sqlite"),
            api_max_body_bytes=int(_number("ASTRO_API_MAX_BODY_MB", 8, minimum=0.001) * 2**20),
            package_max_bytes=int(_number("ASTRO_PACKAGE_MAX_GB", 50, minimum=1e-9) * 10**9),
            missing_after_seconds=_number("ASTRO_MISSING_AFTER", cls.missing_after_seconds, minimum=0),
            staging_dir=_path("ASTRO_STAGING_DIR", home / "staging"),
            home_source=home_source,
        )
