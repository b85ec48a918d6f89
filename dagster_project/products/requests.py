"""Observation requests from YAML files or Python: validated, then stored and expanded into results.

A request file holds one request or a list of them::

    requests:
      - name: sn2026abc-followup
        program: transients
        target_name: SN 2026abc
        ra: 285.66            # degrees, ICRS
        dec: -42.78
        filter_band: r
        exposure_time: 60     # seconds
        n_epochs: 3
        cadence_hours: 1.5
        samples_per_epoch: 1
        copies_mode: single   # single | all_eligible | count
        copies_count: null    # required (>= 1) with copies_mode: count
        window_start: 2026-11-22T00:00:00Z
        window_end: 2026-11-22T12:00:00Z
        match_radius_deg: 0.25
        priority: 0
"""

from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dagster_project.catalog import Catalog, queries
from dagster_project.catalog.queries import add_request, find_request
from dagster_project.catalog.schema import CopiesMode


class InvalidRequest(ValueError):
    """A request that cannot be accepted; the message names every problem."""


class RequestSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    program: str = Field(default="default", min_length=1, max_length=64)
    target_name: str = Field(min_length=1, max_length=128)
    ra: float = Field(ge=0, lt=360, description="degrees")
    dec: float = Field(ge=-90, le=90, description="degrees")
    filter_band: str = Field(min_length=1, max_length=32)
    exposure_time: float = Field(gt=0, description="seconds")
    n_epochs: int = Field(default=1, ge=1, le=10000)
    cadence_hours: float = Field(default=0.0, ge=0)
    samples_per_epoch: int = Field(default=1, ge=1, le=1000)
    copies_mode: Literal["single", "all_eligible", "count"] = "single"
    copies_count: int | None = Field(default=None, ge=1, le=100)
    window_start: datetime | None = None
    window_end: datetime | None = None
    match_radius_deg: float = Field(default=0.25, gt=0, le=10)
    priority: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> "RequestSpec":
        if (self.copies_mode == "count") != (self.copies_count is not None):
            raise ValueError("copies_count is required with copies_mode 'count' and not allowed otherwise")
        for name in ("window_start", "window_end"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                setattr(self, name, value.replace(tzinfo=timezone.utc))  # YAML times without zone are UTC
        if self.window_start and self.window_end and self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        return self

    def columns(self) -> dict:
        fields = self.model_dump(exclude={"cadence_hours", "copies_mode"})
        return {**fields, "cadence_seconds": self.cadence_hours * 3600.0, "copies_mode": CopiesMode(self.copies_mode)}


def parse_requests(document: object, source: str = "request") -> list[RequestSpec]:
    """Validate a parsed YAML document (a mapping, a list, or ``{requests: [...]}``)."""
    if isinstance(document, dict) and "requests" in document:
        document = document["requests"]
    items = document if isinstance(document, list) else [document]
    specs, problems = [], []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"{source} #{i + 1}: expected a mapping of fields, got {type(item).__name__}")
            continue
        try:
            specs.append(RequestSpec.model_validate(item))
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"]) or "request"
                problems.append(f"{source} #{i + 1} ({item.get('name', '?')}): {where}: {error['msg']}")
    if problems:
        raise InvalidRequest("invalid request(s):\n  " + "\n  ".join(problems))
    if not specs:
        raise InvalidRequest(f"{source}: no request found")
    return specs


def load_request_file(path: Path) -> list[RequestSpec]:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:  # missing, a folder, unreadable, not text
        raise InvalidRequest(f"cannot read the request file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InvalidRequest(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    return parse_requests(document, source=str(path))


def submit_requests(catalog: Catalog, specs: list[RequestSpec], survey: str) -> list[tuple[str, int]]:
    """Store and expand requests; returns (name, number of results) per request. Names must be new."""
    created = []
    with catalog.session() as session:
        owner = queries.get_or_create_survey(session, survey)
        for spec in specs:
            if find_request(session, spec.name) is not None:
                raise InvalidRequest(f"a request named {spec.name!r} already exists")
            request = add_request(session, owner, **spec.columns())
            created.append((request.name, len(request.results)))
    return created
