"""The files of registered models: written once under the store, read back only if they are the bytes that
were registered.

A gradient-boosting model is a scikit-learn estimator, which only pickle can persist; a pickle runs code when it
is loaded, so a model file is loaded only when its sha256 is the one recorded in its Model row
(``architecture['file_sha256']``) at registration: a file changed or swapped on disk is refused, never loaded.
The CNN is a state dict loaded with ``torch.load(weights_only=True)`` (``science.realbogus_cnn.from_bytes``),
checked the same way.
"""

import hashlib
import pickle
from pathlib import Path

from dagster_project.store import ProductStore

__all__ = ["FEATURES_KIND", "CNN_KIND", "ModelFileError", "load_model", "save_model"]

#: the two kinds of real/bogus model (``architecture['family']``)
FEATURES_KIND, CNN_KIND = "gradient_boosting", "cnn"


class ModelFileError(RuntimeError):
    """A model's file is missing, or is not the file that was registered."""


def save_model(store: ProductStore, name: str, version: str, kind: str, model) -> tuple[str, str]:
    """Write a trained model; (its path relative to the store, its sha256)."""
    payload = _serialize(kind, model)
    path = store.write_bytes(store.model_path(name, version), payload)
    return store.relative(path), hashlib.sha256(payload).hexdigest()


def load_model(store: ProductStore, relative_path: str, kind: str, sha256: str):
    """The model registered with this file and sha256; ModelFileError if the file is missing or changed."""
    path = store.resolve(relative_path)
    try:
        payload = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ModelFileError(f"the model file {relative_path} is missing from the store") from exc
    found = hashlib.sha256(payload).hexdigest()
    if found != sha256:
        raise ModelFileError(f"the model file {relative_path} is not the one registered (sha256 {found[:12]}..., "
                             f"registered {sha256[:12]}...): refused")
    return _deserialize(kind, payload)


def _serialize(kind: str, model) -> bytes:
    if kind == CNN_KIND:
        from dagster_project.science.realbogus_cnn import to_bytes

        return to_bytes(model)
    if kind == FEATURES_KIND:
        return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    raise ValueError(f"unknown model kind {kind!r}")


def _deserialize(kind: str, payload: bytes):
    if kind == CNN_KIND:
        from dagster_project.science.realbogus_cnn import from_bytes

        return from_bytes(payload)
    if kind == FEATURES_KIND:
        return pickle.loads(payload)  # noqa: S301 - only bytes whose sha256 the catalog registered (module notes)
    raise ValueError(f"unknown model kind {kind!r}")
