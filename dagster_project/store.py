"""Where image products live on disk, and how they are written and read.

Every product is a FITS file written atomically (temporary name, then rename)
so that a reader never sees half a file. Layout under the store root::

    raw/<night>/<name>                          raw frames, as they arrived
    calib/<instrument>/<night>/bias.fits        master bias (ADU)
    calib/<instrument>/<night>/flat_<band>.fits master flat (normalised)
    products/<night>/<observation>/calibrated.fits   SCI (e-), VAR (e-^2), MASK
    products/<night>/<observation>/difference.fits   D, SCORR, FLUX, FLUXERR, MASK, REF
    products/<night>/<observation>/candidates.ecsv
    references/<field>-<band>/v<version>.fits   SCI, VAR, MASK
"""

import os
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from dagster_project.science.calibration import MasterFrame
from dagster_project.science.images import ImagePlanes
from dagster_project.science.masks import MASK_DTYPE


def _atomic_write(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class ProductStore:
    """FITS products below ``root``; paths handed out are absolute."""

    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()

    # -- layout -------------------------------------------------------------
    def calibration_master_path(self, instrument: str, night: str, kind: str, band: str | None) -> Path:
        name = "bias.fits" if kind == "bias" else f"{kind}_{band}.fits"
        return self.root / "calib" / instrument / night / name

    def observation_dir(self, night: str, observation_key: str) -> Path:
        return self.root / "products" / night / observation_key

    def reference_path(self, field_band: str, version: int) -> Path:
        return self.root / "references" / field_band / f"v{version}.fits"

    # -- writing ------------------------------------------------------------
    def write_planes(self, path: Path, planes: ImagePlanes, extra: dict[str, np.ndarray] | None = None) -> Path:
        """SCI/VAR/MASK image extensions (plus ``extra`` named images) with the WCS in each header."""
        maps = {"SCI": planes.data, "VAR": planes.variance, "MASK": planes.mask, **(extra or {})}
        return self.write_maps(path, planes.header, maps)

    def write_maps(self, path: Path, header: fits.Header, maps: dict[str, np.ndarray]) -> Path:
        def write(tmp: Path) -> None:
            hdus = [fits.PrimaryHDU(header=header)]
            for name, array in maps.items():
                dtype = MASK_DTYPE if array.dtype == MASK_DTYPE else np.float32
                hdus.append(fits.ImageHDU(np.asarray(array, dtype=dtype), header=_image_header(header), name=name))
            fits.HDUList(hdus).writeto(tmp, overwrite=True, output_verify="silentfix")

        return _atomic_write(path, write)

    def write_master(self, path: Path, master: MasterFrame, header: fits.Header) -> Path:
        """DATA and MASK extensions; the combined frame's noise and count in the primary header."""
        header = header.copy()
        header["MASTER"], header["NFRAMES"], header["NOISE"] = master.kind, master.n_frames, master.noise
        return self.write_maps(path, header, {"DATA": master.data, "MASK": master.mask})

    def write_table(self, path: Path, table: Table) -> Path:
        return _atomic_write(path, lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True))

    def write_bytes(self, path: Path, payload: bytes) -> Path:
        return _atomic_write(path, lambda tmp: tmp.write_bytes(payload))

    # -- reading ------------------------------------------------------------
    def read_planes(self, path: Path) -> ImagePlanes:
        maps, header = self.read_maps(path, ("SCI", "VAR", "MASK"))
        return ImagePlanes(maps["SCI"], maps["VAR"], maps["MASK"], header)

    def read_maps(self, path: Path, names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], fits.Header]:
        with fits.open(path, memmap=False) as hdul:
            header = hdul[0].header.copy()
            maps = {}
            for name in names:
                data = hdul[name].data
                maps[name] = data.astype(MASK_DTYPE) if name == "MASK" else data.astype(np.float32)
        # the primary HDU holds no pixels; describe the planes so the WCS applies to a 2-D image
        ny, nx = maps[names[0]].shape
        header["NAXIS"], header["NAXIS1"], header["NAXIS2"] = 2, nx, ny
        return maps, header

    def read_master(self, path: Path) -> MasterFrame:
        maps, header = self.read_maps(path, ("DATA", "MASK"))
        return MasterFrame(header["MASTER"], maps["DATA"], int(header["NFRAMES"]), float(header["NOISE"]), maps["MASK"])


_WCS_KEYS = ("WCSAXES", "CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2",
             "CD2_1", "CD2_2", "CDELT1", "CDELT2", "PC1_1", "PC1_2", "PC2_1", "PC2_2", "CUNIT1", "CUNIT2",
             "RADESYS", "EQUINOX", "LONPOLE", "LATPOLE")


def _image_header(primary: fits.Header) -> fits.Header:
    """Extension header carrying the WCS so each plane opens correctly in DS9."""
    return fits.Header([card for card in primary.cards if card.keyword in _WCS_KEYS])
