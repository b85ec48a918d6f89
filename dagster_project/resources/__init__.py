"""Dagster resources: thin, configurable handles on the catalog, the store and the landing folder, and the
pipeline's parameters (the science parameters and the rebuild and retry policies)."""

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, EnvVar

from dagster_project.catalog import Catalog, migrated_catalog
from dagster_project.catalog.queries import RetryPolicy
from dagster_project.catalog.queries import RebuildPolicy
from dagster_project.ingest.fits_structure import StructureLimits
from dagster_project.ingest.instruments import InstrumentRegistry
from dagster_project.ingest.landing import LandingConfig
from dagster_project.references.policy import ReferencePolicy
from dagster_project.resources.parameters import apply_overrides, config_overrides
from dagster_project.resources.run_priority import RunPriorityResource
from dagster_project.science.difference import DifferenceParams
from dagster_project.settings import DIFFERENCE_PARAMS_VARIABLE, Settings
from dagster_project.store import ProductStore

__all__ = ["DATABASE_URL_VARIABLE", "CatalogResource", "LandingResource", "PipelineConfigResource", "RunPriorityResource",
           "StagingResource", "StoreResource", "catalog_url_config", "difference_config", "resources_from_settings"]


#: the environment variable holding the catalog's URL (and so, on PostgreSQL, its password)
DATABASE_URL_VARIABLE = "DATABASE_URL"


class CatalogResource(ConfigurableResource):
    """The PostgreSQL or SQLite catalog (``DATABASE_URL``).

    ``database_url`` is an :class:`~dagster.EnvVar` when the URL comes from the environment
    (:func:`resources_from_settings`): Dagster then holds only the variable's name and reads
    its value when a run or tick uses the resource, so its password is never part of the
    code location's snapshot (what the webserver's UI and GraphQL show).
    """

    database_url: str

    def url(self) -> str:
        """The URL itself, also when this resource is used outside Dagster (e.g. by the headless runner)."""
        value = self.database_url
        if isinstance(value, EnvVar):
            resolved = value.get_value()
            if not resolved:
                raise RuntimeError(f"the catalog's URL is taken from ${value.env_var_name}, which is not set")
            return resolved
        return value

    def catalog(self) -> Catalog:
        return migrated_catalog(self.url())


class StoreResource(ConfigurableResource):
    """Root folder of raw archive, calibration masters and image products (``ASTRO_STORE_DIR``)."""

    root: str

    def store(self) -> ProductStore:
        return ProductStore(Path(self.root))


class StagingResource(ConfigurableResource):
    """The folder staging requests copy into (``ASTRO_STAGING_DIR``): each request's destination lies below it."""

    root: str


class LandingResource(ConfigurableResource):
    """Landing and quarantine folders and the rules for taking files in."""

    landing_dir: str
    store_dir: str
    quarantine_dir: str
    survey: str = "local"
    instruments_file: str | None = None
    settle_seconds: float = 2.0
    truncated_after_seconds: float = 300.0
    max_file_bytes: int = 4 * 2**30
    max_hdus: int = 16
    keep_originals: bool = False
    #: a file registered through the operations API and not landed this long after is missing (seconds)
    missing_after_seconds: float = 3600.0

    def config(self) -> LandingConfig:
        return LandingConfig(
            landing_dir=Path(self.landing_dir),
            store_dir=Path(self.store_dir),
            quarantine_dir=Path(self.quarantine_dir),
            survey=self.survey,
            limits=StructureLimits(max_file_bytes=self.max_file_bytes, max_hdus=self.max_hdus),
            keep_originals=self.keep_originals,
            missing_after_seconds=self.missing_after_seconds,
        )

    def registry(self) -> InstrumentRegistry:
        return InstrumentRegistry.from_yaml(Path(self.instruments_file) if self.instruments_file else None)


class PipelineConfigResource(ConfigurableResource):
    """Science parameters shared by the stages, and the product rebuild and retry policies.

    Defaults are written once: the difference parameters' in ``DifferenceParams`` (``difference`` holds
    only overrides, by field name), the others in :class:`~dagster_project.settings.Settings`.
    """

    #: ASTRO_DIFFERENCE_PARAMS (and ASTRO_DETECTION_THRESHOLD): overrides of DifferenceParams' defaults
    difference: dict[str, Any] = {}
    detect_cosmic_rays: bool = Settings.detect_cosmic_rays
    #: ASTRO_ALLOW_UNCALIBRATED: calibrate without masters when no night has any (else: blocked)
    allow_uncalibrated: bool = Settings.allow_uncalibrated
    max_candidates_per_frame: int = Settings.max_candidates_per_frame
    #: ASTRO_PROMPT_RUNS: the runs a raw-arrival tick's new frames share
    prompt_runs: int = Settings.prompt_runs
    #: ASTRO_SCORR_STD_RANGE: the scorr_std_near_one check's range
    scorr_std_min: float = Settings.scorr_std_range[0]
    scorr_std_max: float = Settings.scorr_std_range[1]
    reference_min_psf_stars: int = Settings.reference_min_psf_stars
    #: product rebuilds (RebuildPolicy)
    product_quiet_seconds: float = Settings.product_quiet_seconds
    product_max_delay_seconds: float = Settings.product_max_delay_seconds
    product_max_attempts: int = Settings.product_max_attempts
    product_retry_backoff_seconds: float = Settings.product_retry_backoff_seconds
    product_build_timeout_seconds: float = Settings.product_build_timeout_seconds
    #: automatic retries of failed or interrupted calibrations, references and differences (RetryPolicy)
    retry_max_attempts: int = Settings.retry_max_attempts
    retry_backoff_seconds: float = Settings.retry_backoff_seconds
    retry_max_backoff_seconds: float = Settings.retry_max_backoff_seconds
    #: references: frames co-added (1: the best single frame), rebuild gain (mag), window (days; None: all)
    reference_max_frames: int = Settings.reference_max_frames
    reference_rebuild_gain_mag: float = Settings.reference_rebuild_gain_mag
    reference_window_days: float | None = Settings.reference_window_days

    def reference_policy(self) -> ReferencePolicy:
        return ReferencePolicy(max_frames=self.reference_max_frames, min_gain_mag=self.reference_rebuild_gain_mag,
                               window_days=self.reference_window_days)

    def difference_params(self) -> DifferenceParams:
        """The parameters of every difference (and of each reference's stored characterization);
        ValueError naming an override that is not a field of DifferenceParams or not of its type."""
        return apply_overrides(DifferenceParams, self.difference)

    def rebuild_policy(self) -> RebuildPolicy:
        return RebuildPolicy(quiet=timedelta(seconds=self.product_quiet_seconds),
                             max_delay=timedelta(seconds=self.product_max_delay_seconds),
                             retry_base=timedelta(seconds=self.product_retry_backoff_seconds),
                             max_attempts=self.product_max_attempts,
                             build_timeout=timedelta(seconds=self.product_build_timeout_seconds))

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.retry_max_attempts, backoff_seconds=self.retry_backoff_seconds,
                           max_backoff_seconds=self.retry_max_backoff_seconds)


def catalog_url_config(database_url: str) -> str:
    """The catalog URL as Dagster's config should hold it: the variable's name (an EnvVar) when the
    URL is the value of ``DATABASE_URL``; otherwise (the settings' SQLite default, or a URL given in
    code) the URL itself."""
    if os.environ.get(DATABASE_URL_VARIABLE) == database_url:
        return EnvVar(DATABASE_URL_VARIABLE)
    return database_url


def resources_from_settings(settings: Settings, landing_dir: Path | None = None, keep_originals: bool = False,
                            retry_policy: RetryPolicy | None = None, own_process_per_run: bool = True) -> dict:
    """The resources of the code location; ``landing_dir``/``keep_originals`` for batch processing of a folder,
    ``retry_policy`` to retry failed runs otherwise than the settings say (``ASTRO_RETRY_*``),
    ``own_process_per_run`` False where runs share a process (the headless runner): their priority and heap are
    left alone, as they are where Celery workers execute the steps."""
    retry = retry_policy or RetryPolicy(max_attempts=settings.retry_max_attempts,
                                        backoff_seconds=settings.retry_backoff_seconds,
                                        max_backoff_seconds=settings.retry_max_backoff_seconds)
    own_process = own_process_per_run and settings.executor != "celery"
    return {
        "catalog": CatalogResource(database_url=catalog_url_config(settings.database_url)),
        "run_priority": RunPriorityResource(background_niceness=settings.background_niceness, own_process=own_process),
        "store": StoreResource(root=str(settings.store_dir)),
        "staging": StagingResource(root=str(settings.staging_dir or settings.home / "staging")),
        "landing": LandingResource(
            landing_dir=str(landing_dir or settings.landing_dir),
            keep_originals=keep_originals,
            store_dir=str(settings.store_dir),
            quarantine_dir=str(settings.quarantine_dir),
            survey=settings.survey,
            instruments_file=str(settings.instruments_file) if settings.instruments_file else None,
            settle_seconds=settings.settle_seconds,
            truncated_after_seconds=settings.truncated_after_seconds,
            max_file_bytes=settings.max_file_bytes,
            max_hdus=settings.max_hdus,
            missing_after_seconds=settings.missing_after_seconds,
        ),
        "pipeline": PipelineConfigResource(difference=difference_config(settings),
                                           detect_cosmic_rays=settings.detect_cosmic_rays,
                                           max_candidates_per_frame=settings.max_candidates_per_frame,
                                           prompt_runs=settings.prompt_runs,
                                           scorr_std_min=settings.scorr_std_range[0],
                                           scorr_std_max=settings.scorr_std_range[1],
                                           reference_min_psf_stars=settings.reference_min_psf_stars,
                                           allow_uncalibrated=settings.allow_uncalibrated,
                                           product_quiet_seconds=settings.product_quiet_seconds,
                                           product_max_delay_seconds=settings.product_max_delay_seconds,
                                           product_max_attempts=settings.product_max_attempts,
                                           product_retry_backoff_seconds=settings.product_retry_backoff_seconds,
                                           product_build_timeout_seconds=settings.product_build_timeout_seconds,
                                           retry_max_attempts=retry.max_attempts,
                                           retry_backoff_seconds=retry.backoff_seconds,
                                           retry_max_backoff_seconds=retry.max_backoff_seconds,
                                           reference_max_frames=settings.reference_max_frames,
                                           reference_rebuild_gain_mag=settings.reference_rebuild_gain_mag,
                                           reference_window_days=settings.reference_window_days),
    }


def difference_config(settings: Settings) -> dict[str, Any]:
    """The settings' overrides of the difference parameters, checked: a bad one stops the code location
    (and every command that loads it) with one line naming the variable and the field."""
    try:
        return config_overrides(DifferenceParams, settings.difference_overrides)
    except ValueError as exc:
        raise ValueError(f"{DIFFERENCE_PARAMS_VARIABLE}: {exc}") from None
