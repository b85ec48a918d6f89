"""A small convolutional real/bogus classifier on cutout triplets (new, reference, difference).

In the spirit of ZTF's braai (Duev et al. 2019, MNRAS 489, 3582) and of the
DES/ATLAS convnets: a VGG-like network small enough for the CPU, trained on
triplets of cutouts centred on each candidate, whose output is calibrated so
that a score of 0.9 means "real nine times in ten" on data like the training
set's.

Conventions
-----------
* ``triplets``: float32 array ``(n, 3, S, S)``, ``S`` odd (21 by default);
  channel 0 the new image, 1 the reference, 2 the difference, each already
  normalized by the caller (e.g. divided by its background noise). Non-finite
  pixels (masked, off the frame) are read as 0, the sky of a
  background-subtracted image.
* ``labels``: 1 real, 0 bogus.
* Scores are probabilities of being real, in [0, 1], calibrated for the class
  mix of the training set: a caller whose base rate differs adds
  ``log(prior odds ratio)`` to the logit.

Network (:class:`RealBogusNet`)
-------------------------------
Two blocks of [3x3 conv, ReLU, 3x3 conv, ReLU, 2x2 max-pool, dropout]
(16 then 32 channels by default), a dense layer (64, ReLU, dropout) and one
logit: about 68,000 parameters and 2.6 million multiply-adds per 21x21
triplet, so a single core scores thousands of candidates a second.

Training (:func:`train_cnn`)
----------------------------
1. :func:`split_validation`: a stratified validation split, or one by group
   (e.g. observation ids) so that no observation is in both halves.
2. Adam on the binary cross-entropy, positives weighted by
   ``n_bogus / n_real`` so that both classes weigh the same whatever the mix;
   each batch is turned by a random one of the 8 rotations and flips (the sky
   has no preferred orientation; the flips keep parity meaningless too).
3. Early stopping: the weights of the epoch with the lowest validation loss
   are kept, and training stops ``patience`` epochs after it.
4. Calibration: the class weighting shifts the logits by
   ``log(n_bogus / n_real)`` (the prior shift of a weighted likelihood), which
   is removed analytically; then one temperature is fitted on the
   validation split by maximum likelihood (Guo et al. 2017), which rescales
   the network's over- or under-confidence without changing the ranking.

Everything runs on the CPU in float32, deterministic for a given seed and
thread count: the seed drives the split (NumPy), the shuffling and the
augmentation (a private ``torch.Generator``) and the dropout (torch's
global generator, seeded inside :func:`torch.random.fork_rng`, so the
caller's random state is left as it was).

Serialization (:func:`to_bytes`, :func:`from_bytes`)
----------------------------------------------------
A ``torch.save`` of plain containers only (the state dict's tensors, the
configuration, temperature and history as dicts, lists and numbers), read
back with ``torch.load(weights_only=True)``: a model file is an input
someone could have tampered with, and the restricted unpickler builds no
arbitrary object and calls no arbitrary function.
"""

import io
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import optimize, special
from torch import nn

from .realbogus import expected_calibration_error

__all__ = [
    "CNNConfig",
    "NotAModelError",
    "RealBogusNet",
    "TrainedCNN",
    "TrainingHistory",
    "architecture",
    "from_bytes",
    "inference_rate",
    "score_cnn",
    "split_validation",
    "to_bytes",
    "train_cnn",
]

#: Written into every serialized model; :func:`from_bytes` refuses anything else.
_FORMAT = "dagster_project.realbogus_cnn"
_FORMAT_VERSION = 1

#: The 8 orientations of the dihedral group: (quarter turns, mirrored).
_ORIENTATIONS = tuple((turns, mirrored) for mirrored in (False, True) for turns in range(4))

#: Temperatures searched, as log(T): beyond e^±4 the network is broken, not miscalibrated.
_LOG_T_BOUNDS = (-4.0, 4.0)


class NotAModelError(ValueError):
    """Bytes given to :func:`from_bytes` that are not a model this module wrote."""


@dataclass(frozen=True)
class CNNConfig:
    """How to build and train the network.

    Attributes
    ----------
    epochs : int
        Most passes over the training split.
    batch_size : int
        Triplets per optimizer step.
    learning_rate, weight_decay : float
        Adam's step size and L2 penalty.
    seed : int
        Drives the split, the initial weights, the shuffling, the augmentation and the dropout.
    stamp_size : int
        Side ``S`` of the cutouts, odd and >= 7 (two 2x2 poolings must leave at least one pixel).
    patience : int
        Epochs without a better validation loss before training stops.
    validation_fraction : float
        Share of the triplets (or of the groups) held out for early stopping and calibration.
    channels : tuple of int
        Channels of the two convolution blocks.
    dense : int
        Units of the dense layer.
    dropout : float
        Dropout rate after each block and after the dense layer.
    test_time_augmentation : bool
        Average the logits over the 8 orientations when scoring (8 times the
        cost); the temperature is fitted the same way, so it stays calibrated.
    num_threads : int or None
        Torch threads while training (restored afterwards); None keeps torch's setting.

    Examples
    --------
    >>> CNNConfig(epochs=5).stamp_size
    21
    >>> CNNConfig(stamp_size=20)
    Traceback (most recent call last):
    ...
    ValueError: stamp_size must be odd and >= 7, got 20
    """

    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    stamp_size: int = 21
    patience: int = 5
    validation_fraction: float = 0.2
    channels: tuple[int, int] = (16, 32)
    dense: int = 64
    dropout: float = 0.25
    test_time_augmentation: bool = False
    num_threads: int | None = None

    def __post_init__(self):
        # a config also comes from a model file: tuples arrive as lists, and bad values must be refused here
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.stamp_size < 7 or self.stamp_size % 2 == 0:
            raise ValueError(f"stamp_size must be odd and >= 7, got {self.stamp_size}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "dense": self.dense,
                    "learning_rate": self.learning_rate, "patience": self.patience}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if len(self.channels) != 2 or min(self.channels) < 1:
            raise ValueError(f"channels must be two positive numbers, got {self.channels}")
        if not 0 < self.validation_fraction < 1 or not 0 <= self.dropout < 1 or self.weight_decay < 0:
            raise ValueError("validation_fraction must be in (0, 1), dropout in [0, 1), weight_decay >= 0")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be None or >= 1, got {self.num_threads}")


@dataclass
class TrainingHistory:
    """What :func:`train_cnn` did: per-epoch losses, the epoch kept, the calibration.

    Attributes
    ----------
    train_loss, validation_loss : list of float
        Class-weighted cross-entropy per epoch (training: mean over the epoch's
        augmented batches, with dropout; validation: the network in eval mode).
    best_epoch : int
        Epoch (1-based) whose weights were kept: the lowest validation loss.
    n_train, n_validation : int
        Triplets in each split.
    calibration_error_before, calibration_error_after : float
        Expected calibration error on the validation split with the prior
        shift removed, before and after the temperature.
    seconds : float
        Wall time of the training.
    """

    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    n_train: int = 0
    n_validation: int = 0
    calibration_error_before: float = math.nan
    calibration_error_after: float = math.nan
    seconds: float = 0.0


@dataclass
class TrainedCNN:
    """A trained network and what scoring needs beside its weights.

    Attributes
    ----------
    module : RealBogusNet
        The network (eval mode after training).
    temperature : float
        Divides the raw logit before the prior shift is removed (> 0).
    logit_offset : float
        ``log(n_bogus / n_real)`` of the training split, the shift the class weighting put into the logits.
    config : CNNConfig
    history : TrainingHistory
    """

    module: "RealBogusNet"
    temperature: float
    logit_offset: float
    config: CNNConfig
    history: TrainingHistory


def _conv_block(c_in: int, c_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(dropout),
    )


class RealBogusNet(nn.Module):
    """The convnet: two blocks of two 3x3 convolutions and a max-pool, a dense layer, one logit.

    Examples
    --------
    >>> net = RealBogusNet(CNNConfig(stamp_size=9))
    >>> net(torch.zeros(2, 3, 9, 9)).shape
    torch.Size([2])
    """

    def __init__(self, config: CNNConfig = CNNConfig()):
        super().__init__()
        c1, c2 = config.channels
        side = config.stamp_size // 4  # two 2x2 poolings, flooring
        self.features = nn.Sequential(_conv_block(3, c1, config.dropout), _conv_block(c1, c2, config.dropout))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * side * side, config.dense), nn.ReLU(), nn.Dropout(config.dropout),
            nn.Linear(config.dense, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(n,)`` of triplets ``(n, 3, S, S)``."""
        return self.head(self.features(x)).squeeze(1)


def architecture(config: CNNConfig = CNNConfig()) -> dict:
    """A JSON-ready description of the network of ``config``, for the model registry.

    Examples
    --------
    >>> a = architecture()
    >>> a["family"], a["input"], a["parameters"]
    ('cnn', '3x21x21', 67985)
    >>> a["layers"][0]
    {'type': 'Conv2d', 'spec': '3, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)', 'parameters': 448}
    """
    net = RealBogusNet(config)
    layers = [
        {"type": type(m).__name__, "spec": m.extra_repr(), "parameters": sum(p.numel() for p in m.parameters())}
        for m in net.modules() if not list(m.children())
    ]
    return {
        "family": "cnn",
        "input": f"3x{config.stamp_size}x{config.stamp_size}",
        "channels": "new, reference, difference",
        "parameters": sum(p.numel() for p in net.parameters()),
        "augmentation": "8 rotations and flips",
        "test_time_augmentation": config.test_time_augmentation,
        "calibration": "temperature scaling",
        "layers": layers,
    }


# ---------------------------------------------------------------- inputs


def _clean_triplets(triplets, stamp_size: int) -> np.ndarray:
    """float32 C-contiguous copy with non-finite pixels set to 0; ValueError naming the shape otherwise."""
    array = np.asarray(triplets)
    expected = (3, stamp_size, stamp_size)
    if array.ndim != 4 or array.shape[1:] != expected:
        raise ValueError(f"triplets must have shape (n, 3, {stamp_size}, {stamp_size}), got {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"triplets must be numbers, got dtype {array.dtype}")
    clean = np.array(array, dtype=np.float32, order="C")
    clean[~np.isfinite(clean)] = 0.0
    return clean


def _check_labels(labels, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 1 (real) or 0 (bogus)")
    if y.min() == y.max():
        raise ValueError("labels must hold both classes")
    return y.astype(np.float32)


def split_validation(labels, groups=None, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation splits, the latter holding about ``fraction`` of the triplets.

    Without ``groups`` the split is stratified (the same share of each class in
    both). With ``groups`` (one id per triplet, e.g. its observation) whole
    groups go to one side, drawn at random until the validation side holds
    ``fraction`` of the triplets: the triplets of one observation share its
    seeing and artifacts, and a split through them would flatter the score.

    Raises
    ------
    ValueError
        If ``groups`` does not match ``labels``, or a side would lack a class.

    Examples
    --------
    >>> groups = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    >>> train, val = split_validation([0, 1] * 5, groups, fraction=0.4)
    >>> len(train), len(val), np.unique(groups[val]).tolist()
    (6, 4, [2, 4])
    """
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if groups is None:
        val = np.concatenate([_draw(np.flatnonzero(y == c), fraction, rng) for c in (0, 1)])
    else:
        val = _group_draw(np.asarray(groups), len(y), fraction, rng)
    is_val = np.zeros(len(y), dtype=bool)
    is_val[val] = True
    train, val = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    for name, side in (("training", train), ("validation", val)):
        if len(np.unique(y[side])) < 2:
            raise ValueError(f"the {name} split lacks a class: give more triplets or groups, or change the fraction")
    return train, val


def _draw(indices: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    count = max(1, round(fraction * len(indices)))
    return rng.permutation(indices)[:count]


def _group_draw(groups: np.ndarray, n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    if groups.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {groups.shape}")
    ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(ids) < 2:
        raise ValueError("groups must hold at least two distinct ids to split by group")
    order = rng.permutation(len(ids))
    # the groups drawn before the running count reaches the target; at least one, never all
    taken = np.cumsum(counts[order]) - counts[order] < fraction * n
    chosen = order[taken][: len(ids) - 1]
    return np.flatnonzero(np.isin(inverse, chosen))


# ---------------------------------------------------------------- torch state, restored


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Torch's intra-op thread count set to ``n`` for the block, then restored (it is process-wide)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _seeded(seed: int) -> Iterator[torch.Generator]:
    """Torch's global generator (initial weights, dropout) seeded inside ``fork_rng``; a private one for batches."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- orientations


def _orient(x: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    x = torch.flip(x, dims=(3,)) if mirrored else x
    return torch.rot90(x, turns, dims=(2, 3)) if turns else x


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each triplet of the batch in one of the 8 orientations, drawn at random."""
    codes = torch.randint(len(_ORIENTATIONS), (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for code, (turns, mirrored) in enumerate(_ORIENTATIONS):
        chosen = codes == code
        if chosen.any():
            out[chosen] = _orient(x[chosen], turns, mirrored)
    return out


# ---------------------------------------------------------------- training


@dataclass
class _Split:
    x: torch.Tensor
    y: torch.Tensor


def train_cnn(triplets, labels, config: CNNConfig = CNNConfig(), *, groups=None) -> TrainedCNN:
    """Train the real/bogus CNN on labelled triplets, with early stopping and a calibrated output.

    Parameters
    ----------
    triplets : array (n, 3, S, S)
        New, reference and difference cutouts, normalized by the caller; ``S = config.stamp_size``.
    labels : array (n,)
        1 real, 0 bogus; both classes needed.
    config : CNNConfig
    groups : array (n,), optional
        One id per triplet (e.g. its observation): the validation split then takes whole groups.

    Returns
    -------
    TrainedCNN
        The weights of the best validation epoch, the temperature fitted on
        the validation split, the config and the history.

    Raises
    ------
    ValueError
        Wrong shapes, labels other than 0/1, or a split that lacks a class.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 3, 9, 9)).astype(np.float32)
    >>> y = np.arange(64) % 2
    >>> x[y == 1, :, 4, 4] += 5  # the "reals" have a bright centre
    >>> trained = train_cnn(x, y, CNNConfig(stamp_size=9, epochs=2, batch_size=16))
    >>> len(trained.history.train_loss), trained.history.n_validation, trained.temperature > 0
    (2, 12, True)
    """
    x = _clean_triplets(triplets, config.stamp_size)
    y = _check_labels(labels, len(x))
    train_idx, val_idx = split_validation(y, groups, config.validation_fraction, config.seed)
    pos_weight = float((y[train_idx] == 0).sum() / (y[train_idx] == 1).sum())
    train, val = (_Split(torch.from_numpy(x[i]), torch.from_numpy(y[i])) for i in (train_idx, val_idx))
    start = time.perf_counter()
    with _torch_threads(config.num_threads), _seeded(config.seed) as generator:
        module = RealBogusNet(config)
        history = _fit(module, train, val, config, pos_weight, generator)
        module.eval()
        val_logits = _logits(module, val.x, config.batch_size * 8, config.test_time_augmentation)
    trained = TrainedCNN(module, 1.0, math.log(pos_weight), config, history)
    _calibrate(trained, val_logits, val.y.numpy())
    history.n_train, history.n_validation = len(train_idx), len(val_idx)
    history.seconds = time.perf_counter() - start
    return trained


def _fit(module, train: _Split, val: _Split, config: CNNConfig, pos_weight: float, generator) -> TrainingHistory:
    """Epochs of Adam until ``patience`` epochs pass without a better validation loss; the best weights kept."""
    optimizer = torch.optim.Adam(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
    history, best_state = TrainingHistory(), None
    for epoch in range(1, config.epochs + 1):
        history.train_loss.append(_train_epoch(module, train, optimizer, loss_fn, config.batch_size, generator))
        history.validation_loss.append(_validation_loss(module, val, loss_fn, config.batch_size * 8))
        if best_state is None or history.validation_loss[-1] < history.validation_loss[history.best_epoch - 1]:
            history.best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        elif epoch - history.best_epoch >= config.patience:
            break
    module.load_state_dict(best_state)
    return history


def _train_epoch(module, data: _Split, optimizer, loss_fn, batch_size: int, generator) -> float:
    """One shuffled pass of augmented batches; the mean loss per triplet."""
    module.train()
    order = torch.randperm(len(data.y), generator=generator)
    total = 0.0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        optimizer.zero_grad()
        loss = loss_fn(module(_augment(data.x[batch], generator)), data.y[batch])
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(order)


def _validation_loss(module, data: _Split, loss_fn, batch_size: int) -> float:
    module.eval()
    logits = torch.from_numpy(_logits(module, data.x, batch_size, False).astype(np.float32))
    return float(loss_fn(logits, data.y))


def _logits(module, x: torch.Tensor, batch_size: int, tta: bool) -> np.ndarray:
    """Raw logits (float64) in batches, without gradients; the mean over the 8 orientations with ``tta``."""
    orientations = _ORIENTATIONS if tta else _ORIENTATIONS[:1]
    out = np.empty(len(x), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            total = sum(module(_orient(batch, turns, mirrored)) for turns, mirrored in orientations)
            out[start : start + len(batch)] = (total / len(orientations)).numpy()
    return out


# ---------------------------------------------------------------- calibration


def _probabilities(logits: np.ndarray, temperature: float, offset: float) -> np.ndarray:
    return special.expit(logits / temperature - offset)


def _calibrate(trained: TrainedCNN, logits: np.ndarray, y: np.ndarray) -> None:
    """The temperature of least validation log-loss, and the calibration error before and after it."""

    def log_loss(log_t: float) -> float:
        z = logits / math.exp(log_t) - trained.logit_offset
        # -log p(y | z) for a logistic model, stable for large |z|
        return float(np.mean(np.logaddexp(0.0, z) - y * z))

    best = optimize.minimize_scalar(log_loss, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    trained.temperature = float(math.exp(best.x))
    history = trained.history
    history.calibration_error_before = expected_calibration_error(_probabilities(logits, 1.0, trained.logit_offset), y)
    history.calibration_error_after = expected_calibration_error(
        _probabilities(logits, trained.temperature, trained.logit_offset), y)


# ---------------------------------------------------------------- scoring


def score_cnn(trained: TrainedCNN, triplets, batch_size: int = 1024) -> np.ndarray:
    """Calibrated probabilities that each triplet is real.

    Parameters
    ----------
    trained : TrainedCNN
    triplets : array (n, 3, S, S)
        As for :func:`train_cnn`, with the ``S`` it was trained on; non-finite pixels read as 0.
    batch_size : int
        Triplets per forward pass (memory, not results).

    Returns
    -------
    ndarray of float64, shape (n,)
        Probabilities in [0, 1].

    Examples
    --------
    >>> trained = TrainedCNN(RealBogusNet(CNNConfig(stamp_size=9)), 1.0, 0.0, CNNConfig(stamp_size=9),
    ...                      TrainingHistory())
    >>> p = score_cnn(trained, np.zeros((4, 3, 9, 9), np.float32))
    >>> p.shape, bool(((p >= 0) & (p <= 1)).all()), bool(np.all(p == p[0]))
    ((4,), True, True)
    """
    x = torch.from_numpy(_clean_triplets(triplets, trained.config.stamp_size))
    trained.module.eval()
    logits = _logits(trained.module, x, batch_size, trained.config.test_time_augmentation)
    return _probabilities(logits, trained.temperature, trained.logit_offset)


def inference_rate(model: TrainedCNN, n: int = 4096, repeats: int = 3) -> float:
    """Candidates scored per second on ONE torch thread (best of ``repeats``), on ``n`` random triplets.

    Examples
    --------
    >>> config = CNNConfig(stamp_size=9)
    >>> inference_rate(TrainedCNN(RealBogusNet(config), 1.0, 0.0, config, TrainingHistory()), n=32) > 0
    True
    """
    size = model.config.stamp_size
    x = np.random.default_rng(0).normal(size=(n, 3, size, size)).astype(np.float32)
    with _torch_threads(1):
        score_cnn(model, x[: min(n, 64)])  # warm-up: first calls allocate and pick kernels
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            score_cnn(model, x)
            best = min(best, time.perf_counter() - start)
    return n / best


# ---------------------------------------------------------------- serialization


def to_bytes(trained: TrainedCNN) -> bytes:
    """The model as bytes: plain containers and tensors only, readable by :func:`from_bytes`.

    Examples
    --------
    >>> config = CNNConfig(stamp_size=9)
    >>> trained = TrainedCNN(RealBogusNet(config), 1.5, 0.0, config, TrainingHistory(best_epoch=3))
    >>> again = from_bytes(to_bytes(trained))
    >>> again.temperature, again.config == config, again.history.best_epoch
    (1.5, True, 3)
    """
    config = asdict(trained.config)
    config["channels"] = list(config["channels"])
    payload = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "config": config,
        "temperature": float(trained.temperature),
        "logit_offset": float(trained.logit_offset),
        "history": asdict(trained.history),
        "state_dict": {k: v.detach().cpu().clone() for k, v in trained.module.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes) -> TrainedCNN:
    """A model written by :func:`to_bytes`, read without unpickling any arbitrary object.

    Raises
    ------
    NotAModelError
        (a ValueError) if ``data`` is not such a model: not a torch file, a
        file holding other objects than plain containers and tensors, or one
        whose contents do not describe this network.

    Examples
    --------
    >>> from_bytes(b"not a model")
    Traceback (most recent call last):
    ...
    dagster_project.science.realbogus_cnn.NotAModelError: not a real/bogus CNN model: ...
    """
    try:
        payload = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever the loader trips on, the file is not a model of ours
        raise NotAModelError(f"not a real/bogus CNN model: {type(error).__name__}: {_first_line(error)}") from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise NotAModelError("not a real/bogus CNN model: the file does not carry this module's format marker")
    if payload.get("format_version") != _FORMAT_VERSION:
        raise NotAModelError(f"unsupported real/bogus CNN format version {payload.get('format_version')!r}")
    try:
        return _rebuild(payload)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        reason = f"{type(error).__name__}: {_first_line(error)}"
        raise NotAModelError(f"not a valid real/bogus CNN model: {reason}") from None


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _rebuild(payload: dict) -> TrainedCNN:
    config = CNNConfig(**payload["config"])  # TypeError on a key this version does not know
    temperature, offset = float(payload["temperature"]), float(payload["logit_offset"])
    if not (math.isfinite(temperature) and temperature > 0 and math.isfinite(offset)):
        raise ValueError(f"temperature {temperature} and logit offset {offset} must be finite, the temperature > 0")
    module = RealBogusNet(config)
    module.load_state_dict(payload["state_dict"], strict=True)  # RuntimeError on any missing or mis-shaped weight
    module.eval()
    return TrainedCNN(module, temperature, offset, config, TrainingHistory(**payload["history"]))
