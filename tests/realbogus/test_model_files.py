"""Registered models' files: written under the store, read back only when they are the bytes registered."""

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from dagster_project.realbogus.model_files import CNN_KIND, FEATURES_KIND, ModelFileError, load_model, save_model
from dagster_project.science.realbogus_cnn import CNNConfig, RealBogusNet, TrainedCNN, TrainingHistory, score_cnn
from dagster_project.store import ProductStore


@pytest.fixture
def store(tmp_path):
    return ProductStore(tmp_path / "store")


def _gbm():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    return HistGradientBoostingClassifier(max_iter=5).fit(X, X[:, 0] > 0), X


def test_a_gradient_boosting_model_round_trips(store):
    model, X = _gbm()
    path, sha = save_model(store, "realbogus-gbm", "v1", FEATURES_KIND, model)
    assert path == "models/realbogus-gbm/v1/model.bin" and len(sha) == 64
    again = load_model(store, path, FEATURES_KIND, sha)
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))


def test_a_cnn_round_trips(store):
    config = CNNConfig(stamp_size=9)
    trained = TrainedCNN(RealBogusNet(config), 1.2, 0.0, config, TrainingHistory())
    path, sha = save_model(store, "realbogus-cnn", "v1", CNN_KIND, trained)
    x = np.random.default_rng(1).normal(size=(5, 3, 9, 9)).astype(np.float32)
    np.testing.assert_array_equal(score_cnn(load_model(store, path, CNN_KIND, sha), x), score_cnn(trained, x))


def test_a_changed_or_missing_file_is_refused_never_loaded(store, tmp_path):
    model, _ = _gbm()
    path, sha = save_model(store, "realbogus-gbm", "v1", FEATURES_KIND, model)
    marker = tmp_path / "pwned"

    class Booby:
        def __reduce__(self):
            return (marker.mkdir, ())

    import pickle

    (store.root / path).write_bytes(pickle.dumps(Booby()))
    with pytest.raises(ModelFileError, match="not the one registered"):
        load_model(store, path, FEATURES_KIND, sha)
    assert not marker.exists()
    (store.root / path).unlink()
    with pytest.raises(ModelFileError, match="missing"):
        load_model(store, path, FEATURES_KIND, sha)


def test_a_path_leading_out_of_the_store_is_refused(store):
    with pytest.raises(ValueError):
        load_model(store, "../../etc/passwd", FEATURES_KIND, "0" * 64)
