"""The per-partition asset: what every observation asset (and the reference and result assets) shares.

An asset of the platform is one function that builds one partition and reports what it built
(:class:`~dagster_project.pipeline.batching.PartitionOutput`)::

    def _calibrate(key: str, run_id: str, catalog: CatalogResource, store: StoreResource,
                   pipeline: PipelineConfigResource) -> PartitionOutput: ...

    calibrated_image = observation_asset(
        "calibrated_image", _calibrate, deps=["raw_observation"], kinds={"fits"}, blocking_checks=True,
        checks={"finite_with_wcs": "Unmasked pixels and variances are finite and ..."},
        description="Raw frame calibrated with the night's master bias and flat ...")

:func:`observation_asset` makes the Dagster asset around it: the partitions (observations unless
told otherwise), the code version, the freshness policy, the checks, the resources (the build's
parameters after ``key`` and ``run_id``, by name), and the run over every partition of the run
(:func:`~dagster_project.pipeline.batching.materialize_partitions`). Upstream assets are named by key.
What it leaves to ``definitions.py``: the group (one per asset package) and the backfill policy
(``ASTRO_BACKFILL_BATCH``), both given when the packages are loaded.
"""

import inspect
from collections.abc import Callable, Mapping, Sequence, Set

from dagster import (
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    FreshnessPolicy,
    MaterializeResult,
    PartitionsDefinition,
    asset,
)

from dagster_project.pipeline.batching import PartitionOutput, materialize_partitions
from dagster_project.pipeline.metadata import CODE_VERSION, NIGHTLY_FRESHNESS
from dagster_project.pipeline.partitions import observations_partitions

__all__ = ["PARTITION_BUILDS", "PartitionBuild", "observation_asset", "resource_keys"]

#: builds one partition: ``build(key, run_id, **resources)``; its parameters after the first two name its resources
PartitionBuild = Callable[..., PartitionOutput]

#: each asset's partition build, by asset name: a partition's work with no Dagster around it (what
#: benchmarks/night_throughput.py measures Dagster's share of a night against)
PARTITION_BUILDS: dict[str, PartitionBuild] = {}


def resource_keys(build: PartitionBuild) -> tuple[str, ...]:
    """The resources a build takes: its parameters after ``key`` and ``run_id``."""
    parameters = list(inspect.signature(build).parameters)
    if parameters[:2] != ["key", "run_id"]:
        raise TypeError(f"{build.__qualname__} must take (key, run_id, <resources>...), not ({', '.join(parameters)})")
    return tuple(parameters[2:])


def observation_asset(
    name: str,
    build: PartitionBuild,
    *,
    description: str,
    kinds: Set[str],
    checks: Mapping[str, str],
    blocking_checks: bool = False,
    deps: Sequence[str | AssetKey | AssetDep] = (),
    partitions_def: PartitionsDefinition = observations_partitions,
    freshness_policy: FreshnessPolicy = NIGHTLY_FRESHNESS,
) -> AssetsDefinition:
    """The asset ``name``, one materialization per partition of a run, each built by ``build``.

    Parameters
    ----------
    checks
        Check name -> description; each partition's build reports a result for every one.
    blocking_checks
        True: a failed check stops the run's downstream steps.
    deps
        Upstream assets, by key (an ``AssetDep`` for a partition mapping).
    """
    resources = resource_keys(build)
    PARTITION_BUILDS[name] = build

    @asset(
        name=name,
        partitions_def=partitions_def,
        deps=list(deps),
        kinds=set(kinds),
        freshness_policy=freshness_policy,
        code_version=CODE_VERSION,
        # run_priority: a redo-lane run's process yields the cores to prompt work (resources/run_priority.py)
        required_resource_keys={*resources, "run_priority"},
        check_specs=[AssetCheckSpec(check, asset=name, blocking=blocking_checks, description=text)
                     for check, text in checks.items()],
        description=description,
    )
    def _asset(context: AssetExecutionContext) -> MaterializeResult:
        handles = {key: getattr(context.resources, key) for key in resources}
        return materialize_partitions(context, lambda key: build(key, context.run_id, **handles))

    return _asset
