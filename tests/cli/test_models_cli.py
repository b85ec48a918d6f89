"""``models list|show|activate``: the registry as the command line shows it, and its bad arguments (one line on
stderr, exit code 2)."""

import json

import pytest

from dagster_project.catalog import Catalog
from dagster_project.catalog.queries import detection
from tests.cli.conftest import run_cli


@pytest.fixture
def registry(home, capsys):
    """A catalog in ASTRO_HOME with two versions of ``real-bogus`` (1.0 active) and one of ``cnn-triplets``."""
    assert run_cli(["migrate"], capsys)[0] == 0
    catalog = Catalog(f"sqlite:///{home / 'catalog.sqlite'}")
    with catalog.session() as s:
        for version, f1 in (("1.0", 0.81), ("2.0", 0.88)):
            detection.register_model(
                s, "real-bogus", version, "classifier", {"family": "gradient_boosting", "library": "lightgbm"},
                {"n_estimators": 500}, {"source": "injections", "n_real": 4681}, {"auc": 0.97, "f1": f1},
                model_path=f"models/real-bogus/{version}.joblib", precision=0.9, recall=0.75, f1_score=f1,
                mlflow_run_id=f"mlflow-{version}")
        detection.register_model(s, "cnn-triplets", "0.1", "classifier", {"family": "cnn", "layers": [32, 64]},
                                 model_path="models/cnn/0.1.pt")
        detection.activate_model(s, "real-bogus", "1.0")
    yield catalog
    catalog.engine.dispose()


def test_list_shows_every_version(registry, capsys):
    code, out, err = run_cli(["models", "list"], capsys)
    assert code == 0 and err == ""
    header, *rows = out.strip().splitlines()
    assert header.split()[:4] == ["name", "version", "type", "architecture"]
    assert [r.split()[:2] for r in rows] == [["cnn-triplets", "0.1"], ["real-bogus", "1.0"], ["real-bogus", "2.0"]]
    cnn, active, inactive = rows
    assert "family=cnn" in cnn and "layers" not in cnn  # the summary keeps the scalar entries
    assert "family=gradient_boosting, library=lightgbm" in active
    assert "0.810" in active and "0.900" in active and "0.750" in active
    assert " yes " in active and " no " in inactive and inactive.rstrip().endswith("-")  # never deployed


def test_list_of_one_name(registry, capsys):
    code, out, _ = run_cli(["models", "list", "--name", "cnn-triplets"], capsys)
    assert code == 0 and [r.split()[0] for r in out.strip().splitlines()[1:]] == ["cnn-triplets"]


def test_show_prints_everything_and_metrics_as_json(registry, capsys):
    code, out, err = run_cli(["models", "show", "real-bogus"], capsys)  # the active version
    assert code == 0 and err == ""
    fields = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert (fields["version"], fields["is_active"], fields["model_type"]) == ("1.0", "True", "classifier")
    assert (fields["model_path"], fields["mlflow_run_id"], fields["f1_score"]) == (
        "models/real-bogus/1.0.joblib", "mlflow-1.0", "0.81")
    assert fields["deployment_date"] != "-" and fields["accuracy"] == "-"
    assert json.loads(fields["training_metrics"]) == {"auc": 0.97, "f1": 0.81}
    assert json.loads(fields["training_dataset"]) == {"source": "injections", "n_real": 4681}
    assert json.loads(fields["hyperparameters"]) == {"n_estimators": 500}
    code, out, _ = run_cli(["models", "show", "real-bogus", "--version", "2.0"], capsys)
    assert code == 0 and "version: 2.0\n" in out and "is_active: False\n" in out


def test_activate_switches_the_active_version(registry, capsys):
    code, out, err = run_cli(["models", "activate", "real-bogus", "2.0"], capsys)
    assert code == 0 and err == ""
    assert out.startswith("model 'real-bogus' version '2.0' is active (was 1.0), deployed ")
    with registry.session() as s:
        assert detection.active_model(s, "real-bogus").version == "2.0"
        assert not detection.get_model(s, "real-bogus", "1.0").is_active


@pytest.mark.parametrize(("argv", "message"), [
    (["models", "show", "nope"], "error: no model named 'nope'"),
    (["models", "activate", "nope", "1.0"], "error: no model named 'nope'"),
    (["models", "list", "--name", "nope"], "error: no model named 'nope'"),
    (["models", "activate", "real-bogus", "9.9"],
     "error: model 'real-bogus' has no version '9.9' (versions: 1.0, 2.0)"),
    (["models", "show", "real-bogus", "--version", "9.9"], "error: model 'real-bogus' has no version '9.9'"),
    (["models", "activate", "real-bogus"], "error: the following arguments are required: version"),
    (["models", "retire", "real-bogus"], "error: argument action: invalid choice"),
])
def test_bad_arguments_are_one_line_and_exit_2(registry, capsys, argv, message):
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err
    with registry.session() as s:  # and nothing changed
        assert detection.active_model(s, "real-bogus").version == "1.0"


def test_without_a_catalog_it_says_where_it_looked(home, capsys):
    code, out, err = run_cli(["models", "list"], capsys)
    assert code == 2 and out == "" and "no catalog at" in err and len(err.strip().splitlines()) == 1
    assert not home.exists()
