"""The catalog: what arrived, what was made of it, and where each observation stands.

``Catalog(url)`` gives sessions and migrations (``db``); ``schema`` the tables, one module per domain
(``observations``, ``results``, ``operations``, and ``base`` for what they share); ``states.transition``
every status change; ``queries`` the named reads and writes, one module per domain (``observations``,
``planning``, ``results``, ``operations``, ``provenance``); ``healpix`` the spatial index behind
``queries.cone_search``.
"""

from dagster_project.catalog import queries, schema
from dagster_project.catalog.db import Catalog, make_engine, migrate, migrated_catalog
from dagster_project.catalog.healpix import HEALPIX_ORDER, angular_separation_deg, healpix_index
from dagster_project.catalog.schema import (
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
    "queries",
    "schema",
    "transition",
]
