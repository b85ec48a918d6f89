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
    references/<field>-<band>/v<version>.char.npz  its background, stars and PSF for differences
    references/<field>-<band>/v<version>-without-<observation>.fits  a co-add's inputs but one (and .char.npz)

    results/<result uid>/r<revision>/<file>      an observation result's products (:data:`RESULT_FILES`)

and, in a folder of its own (``ASTRO_QUARANTINE_DIR``), the files ingest refused::

    <yyyymmdd>/<name>, <name>.reason.txt         by the UTC day they were refused (``<name>.<n>`` if taken)
    duplicates/<name>                            copies of content the archive has already

The reference characterization is a NumPy ``.npz`` (not FITS) because it must
read back bit for bit, the PSF parameters and the parameters it was computed
with included (FITS header floats are not guaranteed to round-trip).

Every folder and file name above comes from outside (``INSTRUME``, ``FILTER``,
partition keys made of ``OBJECT``...), so each one is made a single harmless
path component by :func:`safe_path_component`, and every path handed out or
written is checked by :func:`inside` to lie below the store root. The catalog
keeps the verbatim header values; only the path is sanitized. Raw and refused
files are the exception: they keep the names they arrived with (control
characters made ``_``, ``..`` dropped), as the astronomer knows them.
"""

import hashlib
import json
import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from dagster_project.science.calibration import MasterFrame
from dagster_project.science.difference import ImageCharacterization
from dagster_project.science.images import ImagePlanes
from dagster_project.science.masks import MASK_DTYPE
from dagster_project.science.psf import PSFModel


_UNSAFE_PATH_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")
_EDGE_CHARACTERS = "._-"  # never first or last: no ".", "..", hidden files or option-like names
# a short extension kept at the end when a hash goes in: "a b.fits" -> "a_b_<hash>.fits"
_SUFFIX = re.compile(r"^(.+?)((?:\.[A-Za-z0-9]{1,8}){1,3})$")
_HASH_CHARACTERS = 8


def safe_path_component(value: object, fallback: str, *, max_length: int = 100) -> str:
    """``value`` (a header value, a file name...) as one harmless file or folder name.

    Only ``[A-Za-z0-9_.-]`` survive (any other run of characters, ``/``, NUL,
    newlines and non-ASCII included, becomes ``_``), the name neither starts nor
    ends with ``.``, ``_`` or ``-`` (so never ``.`` or ``..``) and is at most
    ``max_length`` characters. A value that is already such a name is returned
    unchanged; any other gets ``_`` and 8 hex digits of the SHA-256 of the
    original appended (before a short extension such as ``.fits``), so two
    distinct values never share a name by sanitization: ``'../../tmp/x'`` ->
    ``'tmp_x_<hash>'``. An empty value or ``None`` gives ``fallback``, which must
    itself be such a name.
    """
    if not fallback or _UNSAFE_PATH_CHARACTERS.search(fallback) or fallback.strip(_EDGE_CHARACTERS) != fallback:
        raise ValueError(f"fallback {fallback!r} is not a safe path component")
    text = "" if value is None else str(value)
    if not text:
        return fallback
    token = _UNSAFE_PATH_CHARACTERS.sub("_", text).strip(_EDGE_CHARACTERS)
    if token == text and len(token) <= max_length:
        return token
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARACTERS]
    split = _SUFFIX.match(token)
    stem, suffix = (split.group(1), split.group(2)) if split else (token, "")
    stem = stem[:max(1, max_length - len(suffix) - _HASH_CHARACTERS - 1)].rstrip(_EDGE_CHARACTERS) or fallback
    return f"{stem}_{digest}{suffix}"


def inside(root: Path | str, path: Path | str) -> Path:
    """``path`` (relative ones are taken below ``root``), after checking it lies strictly below ``root``.

    Both are resolved first (``..`` and symbolic links followed), so a path that
    only looks as if it were inside is refused too.

    Raises
    ------
    ValueError
        ``path`` resolves to ``root`` itself or to somewhere outside it.
    """
    root, path = Path(root), Path(path)
    candidate = path if path.is_absolute() else root / path
    resolved_root, resolved = root.resolve(), candidate.resolve()
    if resolved == resolved_root or not resolved.is_relative_to(resolved_root):
        raise ValueError(f"refusing path {str(candidate)!r}: it resolves to {str(resolved)!r}, "
                         f"which is not inside {str(resolved_root)!r}")
    return candidate


# --- raw and refused files: the names they arrived with -------------------------------------------------------------

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def raw_dir(store_root: Path | str) -> Path:
    """The raw archive, ``<store>/raw`` (one folder per night below it)."""
    return Path(store_root) / "raw"


def raw_archive_path(store_root: Path | str, night: str, original_name: str, version: int) -> Path:
    """Where a raw file is archived: ``<store>/raw/<night>/<name>``, ``<stem>.v<N>.<suffix>`` for later versions.

    ``original_name`` is its name in the catalog (relative to the landing folder: its folders are kept,
    ``.`` and ``..`` dropped, control characters made ``_``). Always inside the store (ValueError else).
    """
    store_root = Path(store_root)
    folder, _, name = original_name.rpartition("/")
    name = _CONTROL_CHARACTERS.sub("_", name)
    stem, dot, suffix = name.rpartition(".")
    name = name if version == 1 else f"{stem}.v{version}.{suffix}" if dot else f"{name}.v{version}"
    parts = [_CONTROL_CHARACTERS.sub("_", part) for part in folder.split("/") if part not in ("", ".", "..")]
    return inside(store_root, raw_dir(store_root).joinpath(night, *parts, name))


def quarantine_path(quarantine_root: Path | str, name: str, *, duplicate: bool, now: datetime | None = None) -> Path:
    """A free place for a refused file called ``name``: ``duplicates/`` for copies of archived content, else the
    folder of the UTC day (``now``); ``<name>.<n>`` when the name is taken. The folder is created."""
    quarantine_root = Path(quarantine_root)
    day = (now or datetime.now(UTC)).strftime("%Y%m%d")
    folder = quarantine_root / ("duplicates" if duplicate else day)
    folder.mkdir(parents=True, exist_ok=True)
    name = _CONTROL_CHARACTERS.sub("_", name)
    target, n = folder / name, 1
    while os.path.lexists(target):
        target = folder / f"{name}.{n}"
        n += 1
    return inside(quarantine_root, target)


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (no race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it 0600; a product gets the mode any new file would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: the files of one build of an observation result's products (``results/<uid>/r<revision>/``), by kind
RESULT_FILES = {"forced_photometry": "photometry.json", "candidates_near_target": "candidates_near_target.json",
                "cutout_triplet": "cutout.png", "manifest": "manifest.json"}


class ProductStore:
    """FITS products below ``root``; paths handed out are absolute, and always inside ``root``.

    Every method that builds a path makes each component with
    :func:`safe_path_component`; every method that writes refuses a path outside
    ``root`` (ValueError).
    """

    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()

    # -- layout -------------------------------------------------------------
    def _below(self, *components: str) -> Path:
        return inside(self.root, self.root.joinpath(*components))

    def calibration_master_path(self, instrument: str, night: str, kind: str, band: str | None) -> Path:
        kind_token = safe_path_component(kind, "master")
        name = "bias.fits" if kind == "bias" else f"{kind_token}_{safe_path_component(band, 'none')}.fits"
        return self._below("calib", safe_path_component(instrument, "unknown"), safe_path_component(night, "unknown"),
                           name)

    def observation_dir(self, night: str, observation_key: str) -> Path:
        """Folder of one observation's image products."""
        return self._below("products", safe_path_component(night, "unknown"),
                           safe_path_component(observation_key, "unknown"))

    def calibrated_path(self, night: str, observation_key: str) -> Path:
        """The calibrated frame: SCI (e-), VAR (e-^2), MASK."""
        return self.observation_dir(night, observation_key) / "calibrated.fits"

    def difference_path(self, night: str, observation_key: str) -> Path:
        """The difference image: D, SCORR, FLUX, FLUXERR, MASK, REF."""
        return self.observation_dir(night, observation_key) / "difference.fits"

    def reference_path(self, field_band: str, version: int) -> Path:
        return self._below("references", safe_path_component(field_band, "unknown"), f"v{int(version)}.fits")

    def leave_one_out_path(self, field_band: str, version: int, observation_key: str) -> Path:
        """The co-add of a reference version's inputs but one, the template that input is differenced against."""
        return self._below("references", safe_path_component(field_band, "unknown"),
                           f"v{int(version)}-without-{safe_path_component(observation_key, 'unknown')}.fits")

    def result_dir(self, result_key: str, revision: int) -> Path:
        """Folder of one build of an observation result's products."""
        return self._below("results", safe_path_component(result_key, "unknown"), f"r{int(revision)}")

    def result_file(self, result_key: str, revision: int, kind: str) -> Path:
        """One product file of a build of an observation result (``kind``: a key of :data:`RESULT_FILES`)."""
        return self.result_dir(result_key, revision) / RESULT_FILES[kind]

    def model_path(self, name: str, version: str) -> Path:
        """The file of one model version (Model.model_path holds it relative to the root)."""
        return self._below("models", safe_path_component(name, "model"), safe_path_component(version, "v"),
                           "model.bin")

    def relative(self, path: Path | str) -> str:
        """``path`` (inside the root) relative to the root: what the catalog keeps of a model's file."""
        return inside(self.root, path).relative_to(self.root).as_posix()

    def resolve(self, relative: str) -> Path:
        """A path the catalog keeps relative to the root, refused if it leads outside the root."""
        return inside(self.root, self.root / relative)

    @staticmethod
    def characterization_path(reference_path: Path | str) -> Path:
        """Next to the frozen reference: ``v<version>.fits`` -> ``v<version>.char.npz``."""
        return Path(reference_path).with_suffix(".char.npz")

    # -- writing ------------------------------------------------------------
    def write_planes(self, path: Path, planes: ImagePlanes, extra: dict[str, np.ndarray] | None = None) -> Path:
        """SCI/VAR/MASK image extensions (plus ``extra`` named images) with the WCS in each header."""
        maps = {"SCI": planes.data, "VAR": planes.variance, "MASK": planes.mask, **(extra or {})}
        return self.write_maps(path, planes.header, maps)

    def write_maps(self, path: Path, header: fits.Header, maps: dict[str, np.ndarray]) -> Path:
        path = inside(self.root, path)

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
        return _atomic_write(inside(self.root, path), lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True))

    def write_bytes(self, path: Path, payload: bytes) -> Path:
        return _atomic_write(inside(self.root, path), lambda tmp: tmp.write_bytes(payload))

    def write_characterization(self, path: Path, characterization: ImageCharacterization, code_version: str) -> Path:
        """Background map, stars (with every source), PSF and parameters, exactly; ``code_version`` computed it."""
        path = inside(self.root, path)
        c, psf = characterization, characterization.psf
        arrays = {
            "background": c.background, "sky_rms": np.float64(c.sky_rms),
            "psf_stamp": psf.stamp, "psf_shape": np.array([psf.fwhm_px, psf.ellipticity, psf.theta_deg, psf.beta]),
            "psf_n_stars": np.int64(psf.n_stars),
            "star_columns": np.array(c.stars.colnames), "stars_fwhm": np.float64(c.stars.meta["fwhm"]),
            **{f"star_{name}": np.asarray(c.stars[name]) for name in c.stars.colnames},
            **{f"source_{name}": np.asarray(v) for name, v in c.stars.meta["sources"].items()},
            "params": np.array(json.dumps(c.params)), "code_version": np.array(code_version),
        }
        return self.write_arrays(path, arrays)

    def write_arrays(self, path: Path, arrays: dict[str, np.ndarray]) -> Path:
        """Named arrays as one ``.npz`` (no pickled objects: read back with ``allow_pickle=False``)."""
        def write(tmp: Path) -> None:
            with tmp.open("wb") as f:  # a file object: np.savez would append ".npz" to a path
                np.savez(f, **arrays)

        return _atomic_write(inside(self.root, path), write)

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

    def read_characterization(self, path: Path) -> tuple[ImageCharacterization, str]:
        """What :meth:`write_characterization` wrote, and the code version that computed it."""
        with np.load(path, allow_pickle=False) as z:
            sources = {k.removeprefix("source_"): z[k] for k in z.files if k.startswith("source_")}
            stars = Table({name: z[f"star_{name}"] for name in z["star_columns"]},
                          meta={"fwhm": float(z["stars_fwhm"]), "sources": sources})
            fwhm_px, ellipticity, theta_deg, beta = (float(v) for v in z["psf_shape"])
            psf = PSFModel(z["psf_stamp"], fwhm_px, ellipticity, theta_deg, beta, int(z["psf_n_stars"]))
            characterization = ImageCharacterization(
                background=z["background"], sky_rms=float(z["sky_rms"]), stars=stars, psf=psf,
                params=json.loads(str(z["params"])))
            return characterization, str(z["code_version"])

    def read_master(self, path: Path) -> MasterFrame:
        maps, header = self.read_maps(path, ("DATA", "MASK"))
        return MasterFrame(header["MASTER"], maps["DATA"], int(header["NFRAMES"]), float(header["NOISE"]), maps["MASK"])


_WCS_KEYS = ("WCSAXES", "CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2",
             "CD2_1", "CD2_2", "CDELT1", "CDELT2", "PC1_1", "PC1_2", "PC2_1", "PC2_2", "CUNIT1", "CUNIT2",
             "RADESYS", "EQUINOX", "LONPOLE", "LATPOLE")


def _image_header(primary: fits.Header) -> fits.Header:
    """Extension header carrying the WCS so each plane opens correctly in DS9."""
    return fits.Header([card for card in primary.cards if card.keyword in _WCS_KEYS])
