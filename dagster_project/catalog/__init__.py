"""The catalog: what arrived, what was made of it, and where each observation stands.

``Catalog(url)`` gives sessions and migrations; ``models`` the schema (``models_operations``: the
ledger's and provenance's tables, ``results`` those of observation requests and results);
``states.transition`` every status change; ``queries`` the named reads and
lifecycle operations the ingest layer, assets, sensors and CLI use;
``healpix`` the spatial index behind ``queries.cone_search``;
``operations`` the operations ledger and ``provenance`` what each run made of what.
"""

from dagster_project.catalog import operations, provenance, queries, results
from dagster_project.catalog.db import Catalog, make_engine, migrate
from dagster_project.catalog.healpix import HEALPIX_ORDER, angular_separation_deg, healpix_index
from dagster_project.catalog.models import (
    Base,
    CalibrationMaster,
    Candidate,
    CandidateStatus,
    DifferenceRun,
    FrameType,
    MasterKind,
    Observation,
    ObservationStatus,
    PreprocessRun,
    RawDataFile,
    RawFileStatus,
    ReferenceImage,
    RunStatus,
    Survey,
)
from dagster_project.catalog.queries import NotFound, cone_search
from dagster_project.catalog.states import IllegalTransition, transition

__all__ = [
    "HEALPIX_ORDER",
    "Base",
    "CalibrationMaster",
    "Candidate",
    "CandidateStatus",
    "Catalog",
    "DifferenceRun",
    "FrameType",
    "IllegalTransition",
    "MasterKind",
    "NotFound",
    "Observation",
    "ObservationStatus",
    "PreprocessRun",
    "RawDataFile",
    "RawFileStatus",
    "ReferenceImage",
    "RunStatus",
    "Survey",
    "angular_separation_deg",
    "cone_search",
    "healpix_index",
    "make_engine",
    "migrate",
    "operations",
    "provenance",
    "queries",
    "results",
    "transition",
]
