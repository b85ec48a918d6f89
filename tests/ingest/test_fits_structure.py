"""The FITS structure walker: complete, growing, truncated and hostile files."""

import numpy as np
import pytest
from astropy.io import fits

from dagster_project.ingest.fits_structure import InvalidFitsFile, StructureLimits, inspect_fits_structure, reinspect


def write_image(path, shape=(64, 80), extensions=0):
    hdus = [fits.PrimaryHDU(np.arange(np.prod(shape), dtype=np.int16).reshape(shape))]
    hdus += [fits.ImageHDU(np.zeros((10, 10), np.float32), name=f"E{i}") for i in range(extensions)]
    fits.HDUList(hdus).writeto(path)
    return path


def test_complete_file_size_matches_headers(tmp_path):
    path = write_image(tmp_path / "a.fits", extensions=2)
    structure = inspect_fits_structure(path)
    assert structure.is_complete
    assert structure.expected_size == path.stat().st_size
    assert len(structure.hdus) == 3
    assert structure.hdus[0].data_bytes == 64 * 80 * 2


def test_growing_file_is_incomplete_not_invalid(tmp_path):
    full = write_image(tmp_path / "full.fits", shape=(200, 200)).read_bytes()
    partial = tmp_path / "partial.fits"
    for cut in (0, 5, 1000, 2880, 2880 + 5000, len(full) - 1):
        partial.write_bytes(full[:cut])
        structure = inspect_fits_structure(partial)
        assert structure is None or not structure.is_complete, cut


def test_multi_extension_file_cut_inside_extension_header_is_incomplete(tmp_path):
    full = write_image(tmp_path / "full.fits", extensions=1).read_bytes()
    primary = fits.open(tmp_path / "full.fits")[0]
    primary_size = len(primary.header.tostring()) + -(-primary.data.nbytes // 2880) * 2880
    cut = tmp_path / "cut.fits"
    cut.write_bytes(full[: primary_size + 100])
    assert inspect_fits_structure(cut) is None


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"hello world, not a FITS file at all" * 100, "not a FITS file"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 3000, "not a FITS file"),
    ],
)
def test_not_fits(tmp_path, payload, reason):
    path = tmp_path / "x.fits"
    path.write_bytes(payload)
    with pytest.raises(InvalidFitsFile, match=reason):
        inspect_fits_structure(path)


def _header_bytes(cards: list[str]) -> bytes:
    text = "".join(c.ljust(80) for c in cards) + "END".ljust(80)
    return text.ljust(-(-len(text) // 2880) * 2880).encode()


def test_absurd_naxis_is_rejected_before_reading(tmp_path):
    path = tmp_path / "huge.fits"
    path.write_bytes(_header_bytes(["SIMPLE  =                    T", "BITPIX  =                   16",
                                    "NAXIS   =                    2", "NAXIS1  =              1000000",
                                    "NAXIS2  =              1000000"]))
    with pytest.raises(InvalidFitsFile, match="NAXIS1 = 1000000"):
        inspect_fits_structure(path)


def test_too_many_dimensions_and_bad_bitpix(tmp_path):
    path = tmp_path / "a.fits"
    path.write_bytes(_header_bytes(["SIMPLE  =                    T", "BITPIX  =                   16",
                                    "NAXIS   =                    7"] + [f"NAXIS{i}  =                    2" for i in range(1, 8)]))
    with pytest.raises(InvalidFitsFile, match="NAXIS = 7"):
        inspect_fits_structure(path)
    path.write_bytes(_header_bytes(["SIMPLE  =                    T", "BITPIX  =                   12",
                                    "NAXIS   =                    0"]))
    with pytest.raises(InvalidFitsFile, match="BITPIX = 12"):
        inspect_fits_structure(path)


def test_missing_end_card_within_limit(tmp_path):
    path = tmp_path / "noend.fits"
    path.write_bytes(("SIMPLE  =                    T".ljust(80) + "COMMENT junk".ljust(80) * 200).ljust(2880 * 6).encode())
    with pytest.raises(InvalidFitsFile, match="END card"):
        inspect_fits_structure(path, StructureLimits(max_header_blocks=5))


def test_non_integer_axis_and_non_ascii_header(tmp_path):
    path = tmp_path / "a.fits"
    path.write_bytes(_header_bytes(["SIMPLE  =                    T", "BITPIX  =                   16",
                                    "NAXIS   =                    1", "NAXIS1  =                 'ab'"]))
    with pytest.raises(InvalidFitsFile, match="not an integer"):
        inspect_fits_structure(path)
    raw = bytearray(_header_bytes(["SIMPLE  =                    T", "BITPIX  =                    8",
                                   "NAXIS   =                    0"]))
    raw[100] = 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(InvalidFitsFile, match="non-printable"):
        inspect_fits_structure(path)


def test_limits_on_hdus_and_size(tmp_path):
    path = write_image(tmp_path / "many.fits", extensions=5)
    with pytest.raises(InvalidFitsFile, match="more than 3 HDUs"):
        inspect_fits_structure(path, StructureLimits(max_hdus=3))
    with pytest.raises(InvalidFitsFile, match="over the limit"):
        inspect_fits_structure(path, StructureLimits(max_file_bytes=1000))


def test_trailing_garbage_is_invalid(tmp_path):
    path = write_image(tmp_path / "a.fits")
    path.write_bytes(path.read_bytes() + b"garbage!" * 10)
    with pytest.raises(InvalidFitsFile, match="after the last HDU"):
        inspect_fits_structure(path)


def test_reinspect_reuses_the_structure_only_while_the_headers_are_unchanged(tmp_path):
    path = write_image(tmp_path / "a.fits", extensions=1)
    structure = inspect_fits_structure(path)
    assert reinspect(path, structure) is structure  # same size, same header bytes: not parsed again
    assert reinspect(path, None) == structure
    assert reinspect(path, structure, StructureLimits(max_hdus=5)) is not structure  # other limits: read again
    raw = bytearray(path.read_bytes())
    at = raw.index(b"NAXIS1  =")
    raw[at:at + 30] = b"NAXIS1  =                   79"  # same size on disk, another layout
    path.write_bytes(bytes(raw))
    again = reinspect(path, structure)
    assert again is not structure and again == inspect_fits_structure(path)
    assert again.hdus[0].data_bytes == 64 * 79 * 2
    path.write_bytes(bytes(raw) + b"\0" * 2880)  # grown: read again, so what it now is is refused as before
    with pytest.raises(InvalidFitsFile, match="HDU 2"):
        reinspect(path, again)
