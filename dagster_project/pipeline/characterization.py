"""A reference's characterization for differences, stored next to its frozen file and shared by two assets.

``reference_image`` writes it when it freezes a version; ``difference_image`` reads it (or, for a
version frozen before characterizations were stored, computes and writes it once).
"""

from pathlib import Path

from dagster_project.pipeline.metadata import CODE_VERSION
from dagster_project.science.difference import (
    DifferenceParams,
    ImageCharacterization,
    characterization_params,
    characterize_for_difference,
)
from dagster_project.science.images import ImagePlanes
from dagster_project.store import ProductStore

__all__ = ["reference_characterization"]


def reference_characterization(
    products: ProductStore, reference_path: Path | str, reference: ImagePlanes, params: DifferenceParams
) -> tuple[ImageCharacterization, Path, bool]:
    """The reference's characterization for ``params``: read from next to the frozen file, else computed there.

    A stored one is used only when computed with the same characterization parameters by the same code
    version, so a difference gets the numbers it would compute itself; otherwise (or for a version frozen
    before characterizations were stored) it is computed and written once.

    Returns
    -------
    characterization : ImageCharacterization
    path : Path
        The stored file.
    written : bool
        True when computed and written by this call.

    Raises
    ------
    PSFError
        Too few usable stars in the reference.
    """
    path = products.characterization_path(reference_path)
    if path.exists():
        stored, code_version = products.read_characterization(path)
        if stored.params == characterization_params(params) and code_version == CODE_VERSION:
            return stored, path, False
    characterization = characterize_for_difference(reference, params, "reference")
    products.write_characterization(path, characterization, CODE_VERSION)
    return characterization, path, True
