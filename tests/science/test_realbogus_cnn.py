"""The real/bogus CNN on synthetic triplets whose truth is known: separation, calibration, determinism,
serialization that refuses what is not a model, and input checks.

Synthetic triplets (new, reference, difference; noise in units of each channel's sigma):

* real: a Gaussian point source of matched-filter S/N 5-30 in the new image and the difference, absent
  from the reference;
* bogus, in four kinds: a cosmic ray (a sharp 1-2 px spike in new and difference only), a dipole (a star
  moved by 0.5-1.5 px between reference and new: positive and negative lobes in the difference), a bright
  star's residual (the same star in new and reference with widths 5-15 % apart), and pure noise.

Half of all triplets also hold a static source (a star or galaxy in new and reference, none in the
difference), so that a source in the new image alone does not say real.
"""

import dataclasses
import io
import os
import pickle
import re

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dagster_project.science.realbogus import expected_calibration_error
from dagster_project.science.realbogus_cnn import (
    CNNConfig,
    NotAModelError,
    RealBogusNet,
    architecture,
    from_bytes,
    inference_rate,
    score_cnn,
    split_validation,
    to_bytes,
    train_cnn,
)

S = 21
CENTRE = (S - 1) / 2
NOISE = {"new": 1.0, "ref": 0.6, "diff": 1.0}
#: Small enough for the test budget (about 10 s on one thread), large enough to separate the kinds. One
#: thread: on a 2-core machine that other work keeps busy, two torch threads wait on each other at every op
#: (a small training ran 2.4 times slower on 2 threads than on 1 at load 3.9); the scores are the same.
CONFIG = CNNConfig(epochs=6, batch_size=128, patience=3, num_threads=1, seed=1)
N_TRAIN = 3000


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # scoring runs on torch's process-wide thread count (see CONFIG); restored for the other test modules
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- synthetic triplets


def _gaussian(sigma, x0, y0):
    yy, xx = np.mgrid[:S, :S]
    g = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    return g / g.sum()


def _flux(snr, sigma, noise=1.0):
    """Flux of a Gaussian source of matched-filter S/N ``snr`` in white noise of ``noise`` per pixel."""
    return snr * noise * np.sqrt(4 * np.pi) * sigma


def _near_centre(rng, reach=1.0):
    return CENTRE + rng.uniform(-reach, reach, 2)


def _real(rng):
    sigma = rng.uniform(1.0, 1.7)
    source = _flux(rng.uniform(5, 30), sigma) * _gaussian(sigma, *_near_centre(rng))
    return source, np.zeros((S, S)), source


def _cosmic_ray(rng):
    spike = np.zeros((S, S))
    y, x = (int(round(v)) for v in _near_centre(rng))
    spike[y, x] = rng.uniform(8, 60)
    if rng.random() < 0.5:  # two pixels: a grazing hit
        dy, dx = ((0, 1), (1, 0), (0, -1), (-1, 0))[rng.integers(4)]
        spike[y + dy, x + dx] = spike[y, x] * rng.uniform(0.3, 1.0)
    return spike, np.zeros((S, S)), spike


def _dipole(rng):
    sigma = rng.uniform(1.0, 1.7)
    flux = _flux(rng.uniform(20, 150), sigma)
    angle, half = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.5) / 2
    (x0, y0), (dx, dy) = _near_centre(rng), (half * np.cos(angle), half * np.sin(angle))
    new, ref = flux * _gaussian(sigma, x0 + dx, y0 + dy), flux * _gaussian(sigma, x0 - dx, y0 - dy)
    return new, ref, new - ref


def _star_residual(rng):
    sigma = rng.uniform(1.0, 1.7)
    flux = _flux(rng.uniform(50, 300), sigma)
    ratio = 1 + rng.choice((-1, 1)) * rng.uniform(0.05, 0.15)
    position = _near_centre(rng)
    new, ref = flux * _gaussian(sigma, *position), flux * _gaussian(sigma * ratio, *position)
    return new, ref, new - ref


def _noise_only(rng):
    return np.zeros((S, S)), np.zeros((S, S)), np.zeros((S, S))


BOGUS = {"cosmic_ray": _cosmic_ray, "dipole": _dipole, "star_residual": _star_residual, "noise": _noise_only}


def _static_source(rng):
    sigma = rng.uniform(1.0, 4.0)
    return _flux(rng.uniform(10, 100), sigma) * _gaussian(sigma, *rng.uniform(0, S - 1, 2))


def make_triplets(n, seed):
    """``(triplets, labels, kinds)``: half real, the other half the four bogus kinds in equal shares."""
    rng = np.random.default_rng(seed)
    kinds = np.where(rng.random(n) < 0.5, "real", rng.choice(list(BOGUS), n))
    x = np.empty((n, 3, S, S), dtype=np.float32)
    for i, kind in enumerate(kinds):
        new, ref, diff = (_real if kind == "real" else BOGUS[kind])(rng)
        if rng.random() < 0.5:
            static = _static_source(rng)
            new, ref = new + static, ref + static
        for c, (model, sigma) in enumerate(zip((new, ref, diff), NOISE.values())):
            x[i, c] = model + sigma * rng.normal(size=(S, S))
    return x, (kinds == "real").astype(int), kinds


@pytest.fixture(scope="module")
def trained():
    x, y, _ = make_triplets(N_TRAIN, seed=10)
    return train_cnn(x, y, CONFIG)


@pytest.fixture(scope="module")
def held_out():
    return make_triplets(2000, seed=20)


# ---------------------------------------------------------------- what it learns


def test_separates_reals_from_bogus_on_a_held_out_set(trained, held_out):
    x, y, kinds = held_out
    p = score_cnn(trained, x)
    auc = roc_auc_score(y, p)
    per_kind = {k: round(float(p[kinds == k].mean()), 3) for k in np.unique(kinds)}
    assert auc > 0.98, f"ROC-AUC {auc:.4f}; mean score per kind {per_kind}"
    assert ((p >= 0) & (p <= 1)).all()


def test_probabilities_are_calibrated_on_a_held_out_set(trained, held_out):
    x, y, _ = held_out
    ece = expected_calibration_error(score_cnn(trained, x), y)
    assert ece < 0.05, f"expected calibration error {ece:.4f} (temperature {trained.temperature:.3f})"
    assert trained.temperature > 0
    assert trained.history.calibration_error_after < 0.05  # on the validation split the temperature was fitted on


def test_history_records_the_epochs_and_the_one_kept(trained):
    h = trained.history
    assert 1 <= h.best_epoch <= len(h.train_loss) == len(h.validation_loss) <= CONFIG.epochs
    assert h.validation_loss[h.best_epoch - 1] == min(h.validation_loss)
    assert h.n_train + h.n_validation == N_TRAIN and abs(h.n_validation - 0.2 * N_TRAIN) <= 2
    assert h.train_loss[-1] < h.train_loss[0]


# ---------------------------------------------------------------- determinism


def test_the_same_seed_gives_the_same_scores():
    x, y, _ = make_triplets(600, seed=30)
    groups = np.arange(600) // 20  # 30 "observations"
    config = CNNConfig(epochs=2, batch_size=64, num_threads=1, seed=7)
    first, second = (score_cnn(train_cnn(x, y, config, groups=groups), x) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    other = score_cnn(train_cnn(x, y, dataclasses.replace(config, seed=8), groups=groups), x)
    assert not np.array_equal(first, other)


def test_training_leaves_the_callers_random_state_and_threads_alone():
    x, y, _ = make_triplets(200, seed=31)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_cnn(x, y, CNNConfig(epochs=1, batch_size=64, num_threads=2))
    np.testing.assert_array_equal(torch.rand(3), expected)
    assert torch.get_num_threads() == 1


def test_the_validation_split_keeps_groups_whole():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 1000)
    groups = rng.integers(0, 50, 1000)
    train, val = split_validation(labels, groups, fraction=0.2, seed=3)
    assert not set(groups[train]) & set(groups[val])
    assert sorted(np.concatenate([train, val])) == list(range(1000))
    assert 0.15 < len(val) / 1000 < 0.3
    train, val = split_validation(labels, fraction=0.2, seed=3)  # stratified without groups
    assert abs(labels[val].mean() - labels.mean()) < 0.01


def test_a_split_without_both_classes_is_refused():
    with pytest.raises(ValueError, match="lacks a class"):
        split_validation([0, 0, 0, 1], groups=[0, 0, 0, 1], fraction=0.3)


# ---------------------------------------------------------------- serialization


def test_bytes_round_trip_to_identical_scores(trained, held_out):
    x = held_out[0][:500]
    again = from_bytes(to_bytes(trained))
    np.testing.assert_array_equal(score_cnn(again, x), score_cnn(trained, x))
    assert again.config == trained.config
    assert again.temperature == trained.temperature and again.logit_offset == trained.logit_offset
    assert again.history == trained.history


class _Trap:
    """Unpickled by a trusting loader, it creates a directory: the proof that a call was made."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_random_bytes_are_refused():
    with pytest.raises(NotAModelError, match="not a real/bogus CNN model"):
        from_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(NotAModelError):
        from_bytes(b"")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on a plain pickle.dumps
def test_pickles_of_other_objects_are_refused_without_running_them(tmp_path, trained):
    trap = str(tmp_path / "pwned")
    for data in (pickle.dumps(_Trap(trap)), _torch_bytes({"format": "dagster_project.realbogus_cnn", "x": _Trap(trap)}),
                 _torch_bytes(trained.module), pickle.dumps({"a": 1})):
        with pytest.raises(NotAModelError, match="not a real/bogus CNN model"):
            from_bytes(data)
    assert not os.path.exists(trap)


def test_torch_files_that_are_not_this_model_are_refused(trained):
    with pytest.raises(NotAModelError, match="format marker"):
        from_bytes(_torch_bytes({"weights": torch.zeros(3)}))
    good = torch.load(io.BytesIO(to_bytes(trained)), weights_only=True)
    good["state_dict"]["head.1.weight"] = torch.zeros(64, 10)
    with pytest.raises(NotAModelError, match="not a valid real/bogus CNN model"):
        from_bytes(_torch_bytes(good))


# ---------------------------------------------------------------- inputs


@pytest.mark.parametrize("shape", [(5, 3, 19, 19), (5, 21, 21), (5, 2, 21, 21), (3, 21, 21, 3)])
def test_a_wrong_shape_is_refused_naming_it(trained, shape):
    with pytest.raises(ValueError, match=re.escape(f"(n, 3, 21, 21), got {shape}")):
        score_cnn(trained, np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match="shape"):
        train_cnn(np.zeros(shape, np.float32), np.arange(shape[0]) % 2, CONFIG)


def test_labels_must_be_zero_or_one_and_hold_both_classes():
    x = np.zeros((10, 3, S, S), np.float32)
    with pytest.raises(ValueError, match="1 \\(real\\) or 0"):
        train_cnn(x, np.full(10, 2), CONFIG)
    with pytest.raises(ValueError, match="both classes"):
        train_cnn(x, np.zeros(10), CONFIG)


def test_non_finite_pixels_score_as_zeros(trained, held_out):
    x = held_out[0][:50].copy()
    x[:, 2, :3, :] = np.nan
    x[:, 0, 5, 5] = np.inf
    zeroed = np.nan_to_num(x, nan=0.0, posinf=0.0)
    p = score_cnn(trained, x)
    assert np.isfinite(p).all()
    np.testing.assert_array_equal(p, score_cnn(trained, zeroed))


# ---------------------------------------------------------------- registry description, speed helper


def test_architecture_describes_the_network():
    a = architecture(CONFIG)
    assert a["parameters"] == sum(p.numel() for p in RealBogusNet(CONFIG).parameters())
    assert a["parameters"] == sum(layer["parameters"] for layer in a["layers"])
    assert [layer["type"] for layer in a["layers"]].count("Conv2d") == 4
    assert a["input"] == "3x21x21"


def test_inference_rate_is_a_rate(trained):
    torch.set_num_threads(2)
    try:
        assert inference_rate(trained, n=256, repeats=1) > 0
        assert torch.get_num_threads() == 2  # it measures on one thread and gives the caller's setting back
    finally:
        torch.set_num_threads(1)
