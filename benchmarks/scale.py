"""Scale benchmarks (issue 12): 100,000 observation partitions, and cone searches over 10 million candidates.

``partitions``: a temporary Dagster instance (SQLite, ``deploy/dagster.yaml``, or PostgreSQL,
``deploy/dagster-postgres.yaml``) with N observation partitions and a PostgreSQL catalog with the same N
observations (status differenced, with their raw files and completed calibrations); then M new small
FITS frames in the landing folder and ONE evaluation of ``raw_arrival_sensor``, timed (plus applying its
partition request, as the daemon does after the tick); then ``backfill --dry-run`` over every observation,
as a subprocess and in-process; then (``--ui``) ``dagster-webserver`` on the instance and the GraphQL
queries the asset page sends for partition health, timed over HTTP.

``cone``: a PostgreSQL catalog with N synthetic candidates (parents: a survey, observations, difference
runs), ANALYZE, then Q random cone searches of 5-60 arcsec with ``queries.cone_search``: p50 / p95 / max.

Every figure is also given as a ratio to a yardstick measured in the same run: a ``SELECT 1`` round trip
to the catalog (median of 200), for the tick one sha256 of a landed file and astropy parsing its header (the
tick's per-file work is mostly Python), and for the dry run a new interpreter importing dagster. Peak memory: this process's
maximum RSS (and the children's, for subprocesses).

The benchmark writes its rows with SQL (COPY, INSERT ... SELECT) for bulk loading: the platform's own
queries insert one row at a time, which would take hours for 10 million. The rows follow the schema of
``dagster_project/catalog/schema`` (every NOT NULL column, the HEALPix index computed by
``catalog.healpix.healpix_indices`` as the ORM does). Databases are created and dropped by the benchmark.

    .venv/bin/python benchmarks/scale.py partitions [--quick] [--instance sqlite|postgres] [--ui]
    .venv/bin/python benchmarks/scale.py cone [--quick] [--candidates 10000000] [--queries 200]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))
SERVER_URL = os.environ.get("SCALE_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


# --- yardsticks and databases ---------------------------------------------------------------------------------------

def peak_rss_mb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def select1_ms(engine: sa.Engine, n: int = 200) -> float:
    """Median round trip of ``SELECT 1`` on an open connection (the yardstick)."""
    times = []
    with engine.connect() as connection:
        for _ in range(n):
            start = time.perf_counter()
            connection.execute(sa.text("SELECT 1")).scalar()
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


@contextmanager
def postgres_database(name: str, keep: bool = False):
    """A new PostgreSQL database ``name`` (dropped first if left by an earlier run), its URL; dropped after."""
    server = sa.create_engine(SERVER_URL, isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(SERVER_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        if not keep:
            with server.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


def copy_rows(connection, table: str, columns: list[str], lines) -> None:
    """COPY tab-separated ``lines`` (an iterable of str, without newlines) into ``table`` (bulk load: SQL here)."""
    buffer = io.StringIO("\n".join(lines) + "\n")
    cursor = connection.connection.dbapi_connection.cursor()
    cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buffer)


def report(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n== {title}")
    for name, value in rows:
        print(f"  {name:<58} {value}")


# --- a catalog of N processed observations ---------------------------------------------------------------------------

def _field_centres(n_fields: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Field centres spread uniformly over the sky (RA, Dec in degrees)."""
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, n_fields)
    dec = np.degrees(np.arcsin(rng.uniform(-0.95, 0.95, n_fields)))
    return ra, dec


def load_observations(url: str, n: int, n_fields: int, survey: str, seed: int = 1) -> dict:
    """N differenced observations (raw file, completed calibration and difference each), in bulk. Returns what
    the cone benchmark needs: the observations' ids, fields, and the difference runs' ids."""
    from dagster_project.catalog import Catalog, queries
    from dagster_project.catalog.healpix import healpix_indices
    from dagster_project.keys import observation_key

    catalog = Catalog(url)
    catalog.migrate()
    with catalog.session() as session:
        survey_id = queries.get_or_create_survey(session, survey).id
    field_ra, field_dec = _field_centres(n_fields, seed)
    field_of = np.arange(n) % n_fields
    start = datetime(2024, 1, 1, 20, tzinfo=UTC)
    obs_ids = [uuid.uuid4() for _ in range(n)]
    run_ids = [uuid.uuid4() for _ in range(n)]
    raw, obs, pre, diff, keys = [], [], [], [], []
    pixels = healpix_indices(field_ra[field_of], field_dec[field_of])
    for i in range(n):
        when = start + timedelta(days=i // 100, seconds=37 * (i % 100))  # 100 frames a night
        sha = uuid.uuid5(uuid.NAMESPACE_OID, f"{seed}:{i}").hex * 2
        field, night = f"F{field_of[i]:04d}", (when - timedelta(hours=12)).date().isoformat()
        key = observation_key(field, "r", when, sha)
        keys.append(key)
        path = f"/store/raw/{night}/{key}.fits"
        obs.append(f"{obs_ids[i]}\t{survey_id}\t{key}\t{field}\tSIMCAM\t{field_ra[field_of[i]]:.7f}\t"
                   f"{field_dec[field_of[i]]:.7f}\t{pixels[i]}\t{when.isoformat()}\t{night}\tr\t60\t{path}\t"
                   f"differenced")
        raw.append(f"{uuid.uuid4()}\t{key}.fits\t1\t/landing/{key}.fits\t{path}\t11520\t{sha}\taccepted\tscience\t"
                   f"SIMCAM\tr\t{night}\t{when.isoformat()}\t{{}}\t{when.isoformat()}\t{survey_id}\t{obs_ids[i]}")
        pre.append(f"{uuid.uuid4()}\t{obs_ids[i]}\tcompleted\t{{}}\t{{}}")
        diff.append(f"{run_ids[i]}\t{obs_ids[i]}\tcompleted\t{{}}\t{{}}")
    with catalog.engine.begin() as connection:
        copy_rows(connection, "observations", ["id", "survey_id", "observation_id", "field_name", "instrument", "ra",
                                               "dec", "healpix_index", "observation_time", "night", "filter_band",
                                               "exposure_time", "fits_url", "status"], obs)
        copy_rows(connection, "raw_data_files", [
            "id", "original_name", "version", "landing_path", "stored_path", "size_bytes", "sha256", "status",
            "frame_type", "instrument", "filter_band", "night", "observation_time", "header", "arrival_time",
            "survey_id", "observation_id"], raw)
        for table, lines in (("preprocess_runs", pre), ("difference_runs", diff)):
            copy_rows(connection, table, ["id", "observation_id", "status", "parameters", "quality"], lines)
        for table in ("observations", "raw_data_files", "preprocess_runs", "difference_runs"):
            connection.execute(sa.text(f"ANALYZE {table}"))
    catalog.engine.dispose()
    return {"keys": keys, "observation_ids": obs_ids, "run_ids": run_ids, "field_of": field_of,
            "field_ra": field_ra, "field_dec": field_dec,
            "field_bands": sorted({f"F{f:04d}-r" for f in range(n_fields)})}


# --- new frames in the landing folder ---------------------------------------------------------------------------------

def write_landing_frames(landing: Path, scratch: Path, n: int, size: int = 64) -> list[Path]:
    """N small valid science frames: one simulated frame of ``size`` px, its DATE-OBS moved by a second each
    (each has its own content, checksums and observation key); written elsewhere, then renamed in."""
    from astropy.io import fits
    from astropy.time import Time, TimeDelta

    from dagster_project.simulation.night import simulate_night

    simulate_night(scratch, n_fields=1, n_epochs=1, size=size, n_bias=0, n_flats=0, transients_per_frame=0, seed=5)
    template = next(p for p in sorted(scratch.glob("*.fits")) if "_sci_" in p.name)
    with fits.open(template) as hdul:
        header, data = hdul[0].header.copy(), hdul[0].data.copy()
    t0 = Time(header["DATE-OBS"], scale="utc")
    staging = scratch / "staging"
    staging.mkdir()
    paths = []
    for i in range(n):
        when = t0 + TimeDelta(i, format="sec")
        header["DATE-OBS"] = when.isot
        if "MJD-OBS" in header:
            header["MJD-OBS"] = when.mjd
        hdu = fits.PrimaryHDU(data=data, header=header)
        hdu.add_checksum(when="scale benchmark")
        name = f"{template.stem}_{i:05d}.fits"
        hdu.writeto(staging / name)
        paths.append(staging / name)
    landed = []
    for path in paths:
        os.replace(path, landing / path.name)
        landed.append(landing / path.name)
    return landed


# --- part 1: one raw-arrival sensor tick over 1,000 new files, 100,000 partitions registered -----------------------------

@contextmanager
def dagster_instance(root: Path, kind: str, keep: bool):
    """A temporary DAGSTER_HOME on SQLite (deploy/dagster.yaml) or PostgreSQL (deploy/dagster-postgres.yaml)."""
    from dagster import DagsterInstance

    home = root / "dagster"
    home.mkdir(parents=True)
    os.environ["DAGSTER_HOME"] = str(home)
    if kind == "sqlite":
        shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
        with DagsterInstance.get() as instance:
            yield instance
        return
    shutil.copy(REPO / "deploy" / "dagster-postgres.yaml", home / "dagster.yaml")
    with postgres_database(f"scale_dagster_{os.getpid()}", keep) as url:
        parsed = sa.make_url(url)
        os.environ.update(DAGSTER_PG_HOST=parsed.host, DAGSTER_PG_PORT=str(parsed.port or 5432),
                          DAGSTER_PG_USERNAME=parsed.username, DAGSTER_PG_DB=parsed.database)
        with DagsterInstance.get() as instance:
            yield instance
        # the webserver may still hold connections: the database is dropped WITH (FORCE)


def register_partitions(instance, keys: list[str], field_bands: list[str]) -> float:
    start = time.perf_counter()
    for i in range(0, len(keys), 10_000):
        instance.add_dynamic_partitions("observations", keys[i:i + 10_000])
    instance.add_dynamic_partitions("field_bands", field_bands)
    return time.perf_counter() - start


def one_tick(instance, profile: Path | None) -> dict:
    """One evaluation of raw_arrival_sensor as the daemon makes it, then its partition requests applied."""
    from dagster import SensorResult, build_sensor_context

    from dagster_project.definitions import defs
    from dagster_project.resources import resources_from_settings
    from dagster_project.settings import Settings

    sensor = defs.resolve_sensor_def("raw_arrival_sensor")
    resources = resources_from_settings(Settings.from_env())
    context = build_sensor_context(instance=instance, cursor=None, resources=resources)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = sensor(context)
    evaluated, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if profiler:
        profiler.disable()
        profiler.dump_stats(str(profile))
    assert isinstance(result, SensorResult), result
    start = time.perf_counter()
    for request in result.dynamic_partitions_requests:
        if request.partition_keys:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    applied = time.perf_counter() - start
    return {"evaluate_s": evaluated, "evaluate_cpu_s": cpu, "apply_partitions_s": applied, "run_requests": len(result.run_requests),
            "new_partitions": sum(len(r.partition_keys or []) for r in result.dynamic_partitions_requests)}


def header_parse_ms(path: Path, repeat: int = 100) -> float:
    """Median time astropy takes to open a landed file and parse its header (a yardstick of this machine's Python
    speed, which the tick's per-file work mostly is)."""
    from astropy.io import fits

    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fits.getheader(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def python_start_s(repeat: int = 3) -> float:
    """Median wall time of a new interpreter importing dagster (the yardstick of a command's start)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import dagster"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sha256_ms(path: Path, repeat: int = 50) -> float:
    from dagster_project.ingest.landing import sha256_of

    start = time.perf_counter()
    for _ in range(repeat):
        sha256_of(path)
    return (time.perf_counter() - start) / repeat * 1000


# --- part 2: backfill --dry-run over every observation --------------------------------------------------------------------

def backfill_dry_run(root: Path) -> dict:
    """``python -m dagster_project backfill --dry-run`` as a subprocess (wall time) and in-process (its command)."""
    from dagster_project.cli.main import main

    out = root / "dry_run.txt"
    start = time.perf_counter()
    with out.open("w") as fh:
        done = subprocess.run([sys.executable, "-m", "dagster_project", "backfill", "--dry-run"], stdout=fh,
                              stderr=subprocess.PIPE, text=True, cwd=REPO)
    subprocess_s = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"backfill --dry-run exited {done.returncode}: {done.stderr[-2000:]}")
    lines = out.read_text().count("\n")
    import contextlib

    sink = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(sink):
        code = main(["backfill", "--dry-run"])
    in_process_s = time.perf_counter() - start
    assert code == 0
    return {"subprocess_s": subprocess_s, "in_process_s": in_process_s, "lines": lines,
            "children_peak_mb": peak_rss_mb(children=True)}


# --- part 3: the UI's asset pages ------------------------------------------------------------------------------------------

#: what the asset page sends for its partition health bar (copied from the Dagster 1.13 UI bundle)
PARTITION_HEALTH = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
        ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
        ... on MultiPartitionStatuses { primaryDimensionName }
      }
    }
  }
}"""
#: the asset catalog's partition counts of every asset
PARTITION_STATS = """
query { assetNodes { assetKey { path } isPartitioned
  partitionStats { numMaterialized numMaterializing numFailed numPartitions } } }"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(port: int, document: str, variables: dict | None = None) -> tuple[float, dict]:
    body = json.dumps({"query": document, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as answer:
        payload = json.loads(answer.read())
    elapsed = time.perf_counter() - start
    if payload.get("errors"):
        raise RuntimeError(payload["errors"])
    return elapsed, payload["data"]


def ui_queries(root: Path, instance, materialized: int = 0) -> dict[str, float]:
    """dagster-webserver on the instance; each query timed cold (first) and warm (median of the next 3)."""
    port = _free_port()
    log = (root / "webserver.log").open("w")
    server = subprocess.Popen([str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                               "-w", str(REPO / "workspace.yaml")], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            try:
                _post(port, "query { version }")
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(f"dagster-webserver did not come up: {(root / 'webserver.log').read_text()[-2000:]}")
                time.sleep(1)
        times = {}
        for asset in ("raw_observation", "candidates"):
            cold, data = _post(port, PARTITION_HEALTH, {"assetKey": {"path": [asset]}})
            node = data["assetNodeOrError"]
            count = len(node["partitionKeysByDimension"][0]["partitionKeys"])
            warm = statistics.median(_post(port, PARTITION_HEALTH, {"assetKey": {"path": [asset]}})[0] for _ in range(3))
            times[f"asset page partition health, {asset} ({count} keys), cold"] = cold
            times[f"asset page partition health, {asset}, warm"] = warm
        cold, data = _post(port, PARTITION_STATS)
        times[f"asset catalog partitionStats, {len(data['assetNodes'])} assets, cold"] = cold
        times["asset catalog partitionStats, warm"] = statistics.median(_post(port, PARTITION_STATS)[0] for _ in range(3))
        return times
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def cmd_partitions(args) -> int:
    n_obs, n_files = (2_000, 100) if args.quick else (args.observations, args.files)
    with tempfile.TemporaryDirectory(prefix="scale-") as scratch, \
            postgres_database(f"scale_catalog_{os.getpid()}", args.keep) as catalog_url:
        root = Path(scratch)
        os.environ.update(ASTRO_HOME=str(root), DATABASE_URL=catalog_url, ASTRO_SURVEY="scale")
        (root / "landing").mkdir()
        start = time.perf_counter()
        loaded = load_observations(catalog_url, n_obs, n_fields=max(1, n_obs // 100), survey="scale")
        load_s = time.perf_counter() - start
        engine = sa.create_engine(catalog_url)
        yard_ms = select1_ms(engine)
        with dagster_instance(root, args.instance, args.keep) as instance:
            register_s = register_partitions(instance, loaded["keys"], loaded["field_bands"])
            landed = write_landing_frames(root / "landing", root / "frames", n_files)
            sha_ms, file_bytes = sha256_ms(landed[0]), landed[0].stat().st_size
            parse_ms, start_s = header_parse_ms(landed[0]), python_start_s()
            time.sleep(1.5)  # ASTRO_SETTLE_SECONDS (1 s): the files have been quiet long enough
            tick = one_tick(instance, Path(args.profile) if args.profile else None)
            left = len(list((root / "landing").glob("*.fits")))
            dry = backfill_dry_run(root)
            ui = ui_queries(root, instance) if args.ui else None
        engine.dispose()
    taken = n_files - left
    per_file_ms = tick["evaluate_s"] / max(1, taken) * 1000
    rows = [
        ("observations in the catalog / partitions registered", f"{n_obs} / {n_obs} (load {load_s:.1f} s, "
                                                                  f"add_dynamic_partitions {register_s:.1f} s)"),
        ("instance", args.instance),
        ("yardstick: SELECT 1 round trip (median of 200)", f"{yard_ms:.3f} ms"),
        ("yardstick: sha256 of one landed file", f"{sha_ms:.3f} ms ({file_bytes} bytes)"),
        ("yardstick: astropy opens one and parses its header (median of 100)", f"{parse_ms:.3f} ms"),
        ("yardstick: python -c 'import dagster' (median of 3)", f"{start_s:.2f} s"),
        ("tick: files landed / taken", f"{n_files} / {taken} (MAX_FILES_PER_TICK, run requests "
                                        f"{tick['run_requests']}, new partitions {tick['new_partitions']})"),
        ("tick: sensor evaluation", f"{tick['evaluate_s']:.2f} s ({tick['evaluate_cpu_s']:.2f} CPU-s in this process, "
                                    "the rest the catalog's and the disk's)"),
        ("tick: per file taken", f"{per_file_ms:.2f} ms = {per_file_ms / yard_ms:.0f} SELECT 1 = "
                                 f"{per_file_ms / sha_ms:.0f} sha256 = {per_file_ms / parse_ms:.1f} header parses"),
        ("tick: its partitions added to the instance (the daemon's part)", f"{tick['apply_partitions_s']:.2f} s"),
        ("backfill --dry-run, subprocess (wall)", f"{dry['subprocess_s']:.2f} s ({dry['lines']} lines; "
                                                  f"{dry['subprocess_s'] * 1000 / yard_ms:.0f} SELECT 1; "
                                                  f"{dry['subprocess_s'] / start_s:.1f} x importing dagster)"),
        ("backfill --dry-run, in-process (the command)", f"{dry['in_process_s']:.2f} s"),
        ("peak RSS: this process / subprocesses", f"{peak_rss_mb():.0f} MB / {dry['children_peak_mb']:.0f} MB"),
    ]
    for name, seconds in (ui or {}).items():
        rows.append((f"UI GraphQL: {name}", f"{seconds * 1000:.0f} ms = {seconds * 1000 / yard_ms:.0f} SELECT 1"))
    report(f"partitions ({'quick' if args.quick else 'full'})", rows)
    return 0


# --- part 4: cone searches over 10 million candidates --------------------------------------------------------------------

#: candidates per observation (one difference of a crowded field), observations per field (epochs)
CANDIDATES_PER_OBSERVATION, EPOCHS = 1_000, 10
#: a field's candidates lie within this half-width (deg) of its centre: a 1 deg^2 detector
FIELD_HALF_WIDTH = 0.5


def _positions(rng, ra0: float, dec0: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    dec = np.clip(dec0 + rng.uniform(-FIELD_HALF_WIDTH, FIELD_HALF_WIDTH, n), -90, 90)
    ra = (ra0 + rng.uniform(-FIELD_HALF_WIDTH, FIELD_HALF_WIDTH, n) / max(np.cos(np.radians(dec0)), 0.05)) % 360
    return ra, dec


def load_candidates(url: str, n_candidates: int, n_queries: int, seed: int = 2) -> tuple[list[tuple], float]:
    """``n_candidates`` candidates of N/1000 differenced observations in N/10000 fields; returns query centres
    (near random candidates) and the load time. Bulk SQL: COPY into a staging table, then one INSERT ... SELECT
    with the candidates' ids made by the server; the table's secondary indexes (as the schema defines them)
    are dropped for the load and created again after it, and foreign keys are not checked row by row
    (session_replication_role = replica): every parent row exists by construction."""
    from dagster_project.catalog.healpix import healpix_indices
    from dagster_project.catalog.schema import Candidate

    start = time.perf_counter()
    n_obs = max(1, n_candidates // CANDIDATES_PER_OBSERVATION)
    loaded = load_observations(url, n_obs, n_fields=max(1, n_obs // EPOCHS), survey="cone", seed=seed)
    rng = np.random.default_rng(seed)
    centres = []
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("SET session_replication_role = replica"))
        connection.execute(sa.text("SET maintenance_work_mem = '512MB'"))
        for index in Candidate.__table__.indexes:
            index.drop(connection)
        connection.execute(sa.text("CREATE TEMP TABLE parent (k int, observation_id uuid, run_id uuid)"))
        copy_rows(connection, "parent", ["k", "observation_id", "run_id"],
                  (f"{k}\t{o}\t{r}" for k, (o, r) in enumerate(zip(loaded["observation_ids"], loaded["run_ids"]))))
        connection.execute(sa.text("CREATE TEMP TABLE stage (k int, ra float8, dec float8, hp bigint)"))
        per_obs = n_candidates // n_obs
        for first in range(0, n_obs, 1000):
            lines = []
            for k in range(first, min(n_obs, first + 1000)):
                field = loaded["field_of"][k]
                ra, dec = _positions(rng, loaded["field_ra"][field], loaded["field_dec"][field], per_obs)
                pixels = healpix_indices(ra, dec)
                lines.extend(f"{k}\t{a!r}\t{d!r}\t{p}" for a, d, p in zip(ra.tolist(), dec.tolist(), pixels.tolist()))
                if len(centres) < n_queries and rng.random() < 4 * n_queries / n_obs:
                    centres.append((ra[0], dec[0]))
            copy_rows(connection, "stage", ["k", "ra", "dec", "hp"], lines)
            connection.execute(sa.text(
                "INSERT INTO candidates (id, difference_run_id, observation_id, ra, dec, healpix_index, pixel_x, "
                "pixel_y, features) SELECT gen_random_uuid(), p.run_id, p.observation_id, s.ra, s.dec, s.hp, "
                "random() * 2048, random() * 2048, '{}'::jsonb FROM stage s JOIN parent p USING (k)"))
            connection.execute(sa.text("TRUNCATE stage"))
        for index in Candidate.__table__.indexes:
            index.create(connection)
        connection.execute(sa.text("UPDATE difference_runs SET candidates_found = :n"), {"n": per_obs})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE candidates"))
    engine.dispose()
    while len(centres) < n_queries:  # a small load: centres on random fields
        field = rng.integers(len(loaded["field_ra"]))
        ra, dec = _positions(rng, loaded["field_ra"][field], loaded["field_dec"][field], 1)
        centres.append((ra[0], dec[0]))
    return centres[:n_queries], time.perf_counter() - start


def time_cones(url: str, centres: list[tuple], seed: int = 3) -> list[dict]:
    """Each centre moved by up to 30 arcsec, with a radius of 5-60 arcsec: ``queries.cone_search`` timed."""
    from dagster_project.catalog import Catalog, queries
    from dagster_project.catalog.healpix import cone_index_ranges
    from dagster_project.catalog.schema import Candidate

    rng = np.random.default_rng(seed)
    catalog = Catalog(url)
    results = []
    with catalog.session() as session:
        queries.cone_search(session, Candidate, *centres[0], 0.01)  # connection and statement warm-up
        for ra, dec in centres:
            ra = (ra + rng.uniform(-30, 30) / 3600) % 360
            dec = float(np.clip(dec + rng.uniform(-30, 30) / 3600, -90, 90))
            radius = rng.uniform(5, 60) / 3600
            start = time.perf_counter()
            rows = queries.cone_search(session, Candidate, ra, dec, radius)
            elapsed = time.perf_counter() - start
            session.expunge_all()
            results.append({"ms": elapsed * 1000, "rows": len(rows), "ra": ra, "dec": dec, "radius": radius,
                            "ranges": len(cone_index_ranges(ra, dec, radius) or [])})
    catalog.engine.dispose()
    return results


def explain(url: str, ra: float, dec: float, radius: float) -> str:
    """EXPLAIN ANALYZE of the statement cone_search sends (a diagnostic: SQL in the benchmark)."""
    from dagster_project.catalog.queries.observations import cone_search_statement
    from dagster_project.catalog.schema import Candidate

    engine = sa.create_engine(url)
    statement = cone_search_statement(Candidate, ra, dec, radius)
    compiled = statement.compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as connection:
        plan = connection.execute(sa.text(f"EXPLAIN (ANALYZE, BUFFERS) {compiled}")).scalars().all()
    engine.dispose()
    return "\n".join(plan)


def cmd_cone(args) -> int:
    n, n_queries = (200_000, 50) if args.quick else (args.candidates, args.queries)
    with postgres_database(f"scale_cone_{os.getpid()}", args.keep) as url:
        centres, load_s = load_candidates(url, n, n_queries)
        engine = sa.create_engine(url)
        yard_ms = select1_ms(engine)
        engine.dispose()
        results = time_cones(url, centres)
        slowest = max(results, key=lambda r: r["ms"])
        plan = explain(url, slowest["ra"], slowest["dec"], slowest["radius"]) if args.explain else None
    ms = np.array([r["ms"] for r in results])
    rows = np.array([r["rows"] for r in results])
    p50, p95, top = np.percentile(ms, 50), np.percentile(ms, 95), ms.max()
    report(f"cone search ({'quick' if args.quick else 'full'})", [
        ("candidates in PostgreSQL", f"{n} (load, indexes and VACUUM ANALYZE: {load_s:.0f} s)"),
        ("queries (radius 5-60 arcsec)", f"{len(results)}; rows returned: median {np.median(rows):.0f}, "
                                         f"max {rows.max()}; HEALPix ranges: max {max(r['ranges'] for r in results)}"),
        ("yardstick: SELECT 1 round trip (median of 200)", f"{yard_ms:.3f} ms"),
        ("cone_search p50", f"{p50:.2f} ms = {p50 / yard_ms:.1f} SELECT 1"),
        ("cone_search p95", f"{p95:.2f} ms = {p95 / yard_ms:.1f} SELECT 1"),
        ("cone_search max", f"{top:.2f} ms = {top / yard_ms:.1f} SELECT 1"),
        ("peak RSS", f"{peak_rss_mb():.0f} MB"),
    ])
    if plan:
        print(f"\nslowest query ({slowest['ms']:.1f} ms, radius {slowest['radius'] * 3600:.1f} arcsec):\n{plan}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    part = sub.add_parser("partitions", help="sensor tick, backfill --dry-run and UI queries at N partitions")
    part.add_argument("--observations", type=int, default=100_000)
    part.add_argument("--files", type=int, default=1_000)
    part.add_argument("--instance", choices=("sqlite", "postgres"), default="sqlite")
    part.add_argument("--ui", action="store_true", help="also start dagster-webserver and time its asset queries")
    part.add_argument("--profile", help="write a cProfile of the tick to this file")
    part.set_defaults(func=cmd_partitions)
    cone = sub.add_parser("cone", help="cone searches over N candidates in PostgreSQL")
    cone.add_argument("--candidates", type=int, default=10_000_000)
    cone.add_argument("--queries", type=int, default=200)
    cone.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of the slowest query")
    cone.set_defaults(func=cmd_cone)
    for command in (part, cone):
        command.add_argument("--quick", action="store_true", help="smoke mode: small counts")
        command.add_argument("--keep", action="store_true", help="keep the databases (drop them yourself)")
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
