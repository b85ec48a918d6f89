"""The FITS structure walker: complete, growing, truncated and hostile files."""

import numpy as np
import pytest
from astropy.io import fits

from dagster_project.ingest.fits_structure import (
    ChecksumMismatch,
    InvalidFitsFile,
    StructureLimits,
    inspect_fits_structure,
    ones_complement_sum,
    reinspect,
    verify_checksums,
)


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


# --- checksums and header values, read from the bytes as written -----------------------------------------------------

def _with_checksums(path, hdus):
    for hdu in hdus:
        hdu.add_checksum()
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.mark.parametrize("data", [
    np.arange(64 * 80, dtype=np.int16).reshape(64, 80) * 7,
    np.random.default_rng(1).normal(1000, 30, (33, 47)).astype(np.float32),  # rows not a multiple of 4 bytes
    np.random.default_rng(2).integers(0, 2**16, (50, 50)).astype(np.uint16),  # BZERO 32768
])
def test_ones_complement_sums_agree_with_astropy(tmp_path, data):
    path = _with_checksums(tmp_path / "a.fits", [fits.PrimaryHDU(data), fits.ImageHDU(data[:5, :7] * 2)])
    structure = inspect_fits_structure(path)
    with fits.open(path, checksum=True) as hdul, open(path, "rb") as fh:
        for hdu, layout in zip(hdul, structure.hdus):
            assert hdu.verify_checksum() == 1 and hdu.verify_datasum() == 1
            padded = -(-layout.data_bytes // 2880) * 2880
            assert ones_complement_sum(fh, layout.data_offset, padded) == int(hdu.header["DATASUM"])
        verify_checksums(fh, structure)


def _flipped(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_the_data_breaks_the_datasum(tmp_path):
    path = _with_checksums(tmp_path / "a.fits", [fits.PrimaryHDU(np.arange(400, dtype=np.float32).reshape(20, 20))])
    _flipped(path, inspect_fits_structure(path).hdus[0].data_offset + 17)
    with open(path, "rb") as fh, pytest.raises(ChecksumMismatch, match="HDU 0: DATASUM does not match"):
        verify_checksums(fh, inspect_fits_structure(path))


def test_a_changed_header_byte_breaks_the_checksum_of_its_own_hdu(tmp_path):
    data = np.arange(400, dtype=np.float32).reshape(20, 20)
    path = _with_checksums(tmp_path / "a.fits", [fits.PrimaryHDU(data), fits.ImageHDU(data, name="SCI")])
    extension = inspect_fits_structure(path).hdus[1]
    name_at = extension.card_images.index("'SCI") + 1  # EXTNAME's value, changed to 'TCI'
    _flipped(path, extension.header_offset + name_at + 2)
    with open(path, "rb") as fh, pytest.raises(ChecksumMismatch, match="HDU 1: CHECKSUM does not match"):
        verify_checksums(fh, inspect_fits_structure(path))


def test_a_datasum_that_is_not_a_number_is_named(tmp_path):
    hdu = fits.PrimaryHDU(np.ones((20, 20), np.float32))
    hdu.header["DATASUM"] = "twelve"
    hdu.writeto(tmp_path / "a.fits")
    with open(tmp_path / "a.fits", "rb") as fh, pytest.raises(InvalidFitsFile, match="DATASUM = 'twelve' is not"):
        verify_checksums(fh, inspect_fits_structure(tmp_path / "a.fits"))


def test_header_values_are_looked_up_as_astropy_does(tmp_path):
    header = fits.Header()
    header["EXPTIME"] = 30.0
    header["HIERARCH ESO DET DIT"] = 1.5
    header.append(("EXPTIME", 99.0))  # a repeated keyword: the first one counts
    header["COMMENT"] = "not a value"
    fits.PrimaryHDU(np.ones((16, 16), np.float32), header=header).writeto(tmp_path / "a.fits")
    values = inspect_fits_structure(tmp_path / "a.fits").primary.values
    astropy_header = fits.getheader(tmp_path / "a.fits")
    for key in ("EXPTIME", "exptime", "HIERARCH ESO DET DIT", "ESO DET DIT", "NAXIS1", "BITPIX"):
        assert values[key] == astropy_header[key], key
    assert "COMMENT" not in values and "MISSING" not in values and values.get("MISSING") is None
    assert inspect_fits_structure(tmp_path / "a.fits").primary.data_shape == (16, 16)
