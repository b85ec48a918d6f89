"""One configuration object: every difference parameter reachable from the settings, defaults written once
(in ``DifferenceParams``); the code location composed from the settings, read once."""

import ast
import dataclasses
from pathlib import Path

import pytest

from dagster_project.definitions import defs, settings as location_settings
from dagster_project.pipeline import build_jobs
from dagster_project.resources import PipelineConfigResource, resources_from_settings
from dagster_project.science.difference import DifferenceParams
from dagster_project.sensors import build_sensors
from dagster_project.settings import Settings
from tests.platform import make_settings

PACKAGE = Path(__file__).resolve().parents[1] / "dagster_project"


def _pipeline(settings: Settings) -> PipelineConfigResource:
    return resources_from_settings(settings)["pipeline"]


def _other_value(field: dataclasses.Field):
    """A value of the field's type that is not its default."""
    if field.name == "astrometric_rms":
        return [0.05, 0.07]
    if field.default is None:  # psf_stamp_size, psf_tiles, zogy_tiles: int or None
        return 7
    return field.default + 1 if isinstance(field.default, int) else field.default * 1.5


def test_without_overrides_every_difference_parameter_is_its_default(tmp_path, sqlite_url):
    pipeline = _pipeline(make_settings(tmp_path, sqlite_url, detection_threshold=None))
    assert pipeline.difference == {}
    assert pipeline.difference_params() == DifferenceParams() == PipelineConfigResource().difference_params()


def test_every_difference_parameter_can_be_set_from_the_environment(tmp_path, monkeypatch):
    fields = dataclasses.fields(DifferenceParams)
    overrides = {f.name: _other_value(f) for f in fields}
    monkeypatch.setenv("ASTRO_HOME", str(tmp_path))
    monkeypatch.setenv("ASTRO_DIFFERENCE_PARAMS", __import__("json").dumps(overrides))
    monkeypatch.delenv("ASTRO_DETECTION_THRESHOLD", raising=False)
    params = _pipeline(Settings.from_env()).difference_params()
    for f in fields:
        expected = tuple(overrides[f.name]) if f.name == "astrometric_rms" else overrides[f.name]
        assert getattr(params, f.name) == expected != f.default, f.name
    assert len(fields) > 20


def test_the_detection_threshold_variable_still_sets_the_threshold(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRO_HOME", str(tmp_path))
    monkeypatch.setenv("ASTRO_DETECTION_THRESHOLD", "4.5")
    monkeypatch.setenv("ASTRO_DIFFERENCE_PARAMS", '{"min_matches": 8}')
    params = _pipeline(Settings.from_env()).difference_params()
    assert (params.threshold, params.min_matches, params.max_stars) == (4.5, 8, DifferenceParams.max_stars)
    monkeypatch.setenv("ASTRO_DIFFERENCE_PARAMS", '{"threshold": 4}')
    with pytest.raises(ValueError, match="ASTRO_DETECTION_THRESHOLD .* disagree"):
        Settings.from_env()


@pytest.mark.parametrize(("value", "message"), [
    ('{"treshold": 4.5}', r"ASTRO_DIFFERENCE_PARAMS: 'treshold' is not a field of DifferenceParams; its fields: "
                          r"threshold, "),
    ('{"min_matches": 2.5}', "ASTRO_DIFFERENCE_PARAMS: min_matches must be an integer, not 2.5"),
    ('{"threshold": "high"}', "ASTRO_DIFFERENCE_PARAMS: threshold must be a number, not 'high'"),
    ('{"astrometric_rms": [0.1]}', "astrometric_rms must be a list of 2 numbers or null"),
    ('{"threshold": null}', "threshold must be a number, not None"),
])
def test_a_bad_difference_parameter_is_named(tmp_path, monkeypatch, value, message):
    monkeypatch.setenv("ASTRO_HOME", str(tmp_path))
    monkeypatch.delenv("ASTRO_DETECTION_THRESHOLD", raising=False)
    monkeypatch.setenv("ASTRO_DIFFERENCE_PARAMS", value)
    with pytest.raises(ValueError, match=message):
        resources_from_settings(Settings.from_env())


def test_the_difference_parameters_must_be_a_json_object(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRO_HOME", str(tmp_path))
    monkeypatch.setenv("ASTRO_DIFFERENCE_PARAMS", "threshold=4")
    with pytest.raises(ValueError, match="ASTRO_DIFFERENCE_PARAMS must be a JSON object"):
        Settings.from_env()


def test_a_null_that_is_the_default_is_kept_out_of_dagsters_config(tmp_path, sqlite_url):
    settings = make_settings(tmp_path, sqlite_url, difference_params={"zogy_tiles": None, "astrometric_rms": [1, 2]})
    pipeline = _pipeline(settings)
    assert pipeline.difference == {"threshold": 5.0, "astrometric_rms": [1.0, 2.0]}  # make_settings gives 5
    assert pipeline.difference_params().astrometric_rms == (1.0, 2.0)


def test_the_other_science_parameters_come_from_the_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRO_HOME", str(tmp_path))
    monkeypatch.setenv("ASTRO_DETECT_COSMIC_RAYS", "0")
    monkeypatch.setenv("ASTRO_MAX_CANDIDATES", "50")
    pipeline = _pipeline(Settings.from_env())
    assert (pipeline.detect_cosmic_rays, pipeline.max_candidates_per_frame) == (False, 50)
    defaults = PipelineConfigResource()
    assert (defaults.detect_cosmic_rays, defaults.max_candidates_per_frame) == (True, 500)


def test_the_sensors_are_built_from_the_settings(tmp_path, sqlite_url):
    settings = make_settings(tmp_path, sqlite_url, sensor_interval_seconds=7, bookkeeping_interval_seconds=20)
    sensors = build_sensors(settings, build_jobs(settings))
    assert sorted(s.name for s in sensors) == sorted(s.name for s in defs.sensors)
    # what a frame waits for ticks often; what waits for runs or a debounce (the ledger, product rebuilds) less
    assert {s.name: s.minimum_interval_seconds for s in sensors} == {
        "raw_arrival_sensor": 7, "reference_and_difference_sensor": 7,
        "operations_ledger_sensor": 20, "product_rebuild_sensor": 20, "staging_sensor": 20}


def test_the_bookkeeping_sensors_tick_every_third_loop_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRO_HOME", str(tmp_path))
    monkeypatch.delenv("ASTRO_BOOKKEEPING_INTERVAL", raising=False)
    assert Settings.from_env().bookkeeping_interval_seconds == 15
    monkeypatch.setenv("ASTRO_BOOKKEEPING_INTERVAL", "0")
    with pytest.raises(ValueError, match="ASTRO_BOOKKEEPING_INTERVAL"):
        Settings.from_env()


@pytest.mark.parametrize("module", ["sensors/builder.py", "sensors/raw_arrival.py",
                                    "sensors/reference_and_difference.py", "sensors/product_rebuild.py",
                                    "sensors/__init__.py", "pipeline/batching.py", "pipeline/jobs.py"])
def test_nothing_reads_the_environment_at_import(module):
    tree = ast.parse((PACKAGE / module).read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "from_env"]
    assert not calls, f"{module} reads the settings itself: definitions.py passes them"


def test_the_code_location_batches_backfills_as_the_settings_say():
    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups == {"raw_observation": "calibration", "calibrated_image": "calibration",
                      "reference_image": "references", "difference_image": "detection", "candidates": "detection",
                      "observation_products": "products"}
    for key in graph.get_all_asset_keys():
        policy = graph.get(key).backfill_policy
        if key.to_user_string() == "reference_image":
            assert policy is None
        else:
            assert policy.max_partitions_per_run == location_settings.backfill_batch_size


def test_the_retry_and_rebuild_policies_come_from_the_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRO_HOME", str(tmp_path))
    for name, value in {"ASTRO_RETRY_ATTEMPTS": "2", "ASTRO_RETRY_BACKOFF": "3", "ASTRO_RETRY_MAX_BACKOFF": "4",
                        "ASTRO_PRODUCT_QUIET": "5", "ASTRO_PRODUCT_MAX_DELAY": "6", "ASTRO_PRODUCT_ATTEMPTS": "7",
                        "ASTRO_PRODUCT_RETRY_BACKOFF": "8", "ASTRO_PRODUCT_BUILD_TIMEOUT": "9"}.items():
        monkeypatch.setenv(name, value)
    pipeline = _pipeline(Settings.from_env())
    retry, rebuild = pipeline.retry_policy(), pipeline.rebuild_policy()
    assert (retry.max_attempts, retry.backoff_seconds, retry.max_backoff_seconds) == (2, 3, 4)
    assert [rebuild.quiet.total_seconds(), rebuild.max_delay.total_seconds(), rebuild.max_attempts,
            rebuild.retry_base.total_seconds(), rebuild.build_timeout.total_seconds()] == [5, 6, 7, 8, 9]
    defaults = PipelineConfigResource()  # the settings' defaults, written once in Settings
    assert (defaults.retry_policy().max_backoff_seconds, defaults.rebuild_policy().max_attempts) == (900, 5)


def _variables_read_by_the_settings() -> set[str]:
    tree = ast.parse((PACKAGE / "settings.py").read_text())
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and (node.value.startswith("ASTRO_") or node.value in ("DATABASE_URL", "DAGSTER_HOME"))
            and node.value.replace("_", "").isalnum()}


def test_every_setting_is_in_the_readme_table_and_the_settings_docstring():
    import dagster_project.settings as settings_module

    readme = (PACKAGE.parent / "README.md").read_text()
    variables = _variables_read_by_the_settings()
    assert len(variables) > 25
    assert not {name for name in variables if f"`{name}`" not in readme}, "missing from the README's settings table"
    assert not {name for name in variables if f"``{name}``" not in settings_module.__doc__}, "missing from settings.py"


def test_the_check_thresholds_come_from_the_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRO_HOME", str(tmp_path))
    monkeypatch.setenv("ASTRO_SCORR_STD_RANGE", "0.7, 1.4")
    monkeypatch.setenv("ASTRO_REFERENCE_MIN_PSF_STARS", "25")
    pipeline = _pipeline(Settings.from_env())
    assert (pipeline.scorr_std_min, pipeline.scorr_std_max, pipeline.reference_min_psf_stars) == (0.7, 1.4, 25)


@pytest.mark.parametrize("value", ["1.2", "1.3,0.9", "a,b"])
def test_a_bad_scorr_range_is_named(tmp_path, monkeypatch, value):
    monkeypatch.setenv("ASTRO_HOME", str(tmp_path))
    monkeypatch.setenv("ASTRO_SCORR_STD_RANGE", value)
    with pytest.raises(ValueError, match="ASTRO_SCORR_STD_RANGE"):
        Settings.from_env()


@pytest.mark.parametrize("value, message", [("20", "at most 19"), ("-1", "at least 0"), ("low", "an integer")])
def test_a_bad_background_niceness_is_named(tmp_path, monkeypatch, value, message):
    monkeypatch.setenv("ASTRO_HOME", str(tmp_path))
    monkeypatch.setenv("ASTRO_BACKGROUND_NICENESS", value)
    with pytest.raises(ValueError, match=f"ASTRO_BACKGROUND_NICENESS must be {message}"):
        Settings.from_env()
