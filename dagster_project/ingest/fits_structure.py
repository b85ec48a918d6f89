"""Read the structure of a FITS file without trusting it.

A file in the landing folder may still be being written, truncated, not FITS
at all, or hostile (a header claiming a 10^12-pixel array). Before astropy
touches the data we walk the header blocks ourselves, with limits, and compute
the exact size the headers imply (FITS Standard 4.0, sections 3.3-3.4 and 4.4):
each HDU is its header (a multiple of 2880-byte blocks, ending with the END
card) followed by ``|BITPIX|/8 * GCOUNT * (PCOUNT + NAXIS1*...*NAXISn)`` bytes
of data padded to a multiple of 2880.
"""

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from astropy.io import fits

BLOCK = 2880
CARD = 80
VALID_BITPIX = {8, 16, 32, 64, -32, -64}
SIGNATURE = b"SIMPLE  ="
EXTENSION_SIGNATURE = b"XTENSION="
_PRINTABLE = bytes(range(0x20, 0x7F))


class InvalidFitsFile(ValueError):
    """The file is not a usable FITS file; ``reason`` says why in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class StructureLimits:
    max_file_bytes: int = 4 * 2**30
    max_hdus: int = 16
    max_header_blocks: int = 100  # 3600 cards per header
    max_axis_length: int = 65536
    max_naxis: int = 3


@dataclass(frozen=True)
class HduLayout:
    header: fits.Header
    header_offset: int
    data_offset: int
    data_bytes: int  # unpadded


@dataclass(frozen=True)
class FitsStructure:
    hdus: tuple[HduLayout, ...]
    expected_size: int  # bytes the headers imply, padding included
    actual_size: int
    #: digest of the header blocks as read, and the limits they were read under (see :func:`reinspect`)
    header_digest: bytes = field(default=b"", repr=False, compare=False)
    limits: "StructureLimits | None" = field(default=None, repr=False, compare=False)

    @property
    def is_complete(self) -> bool:
        return self.actual_size == self.expected_size

    @property
    def primary_header(self) -> fits.Header:
        return self.hdus[0].header


def open_regular(path: Path):
    """Open ``path`` for reading only if it is a regular file; links are not followed and FIFOs do not block."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidFitsFile("not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _read_header(fh, offset: int, limits: StructureLimits, index: int, digest=None) -> tuple[fits.Header, int]:
    """Header starting at ``offset``; returns it and the offset of its data (``digest``: updated with its blocks)."""
    raw = bytearray()
    for _ in range(limits.max_header_blocks):
        block = fh.read(BLOCK)
        if len(block) < BLOCK:
            raise _Incomplete(f"HDU {index}: header ends before its END card")
        if block.translate(None, _PRINTABLE):  # FITS headers are printable ASCII only
            raise InvalidFitsFile(f"HDU {index}: header holds non-printable bytes (no END card before the data?)")
        raw += block
        # END must start a card: look only at card boundaries of this block
        for start in range(len(raw) - BLOCK, len(raw), CARD):
            if raw[start : start + 8] == b"END     ":
                text = raw[: start + CARD].decode("ascii")
                try:
                    header = fits.Header.fromstring(text)
                except Exception as exc:  # astropy raises several types for broken cards
                    raise InvalidFitsFile(f"HDU {index}: unreadable header ({exc})") from None
                _verify_values(header, text, index)
                if digest is not None:
                    digest.update(raw)
                return header, offset + len(raw)
    raise InvalidFitsFile(f"HDU {index}: no END card within {limits.max_header_blocks} header blocks")


def _verify_values(header: fits.Header, text: str, index: int) -> None:
    """Every card's value must parse: astropy parses lazily, and would fail later, far from the cause.

    The card is quoted from ``text`` as it was written: astropy rewrites a card it failed to parse.
    """
    for card in header.cards:
        try:
            card.value
        except Exception:  # VerifyError or ValueError, depending on how the card is broken
            image = next((text[i:i + CARD] for i in range(0, len(text), CARD)
                          if text[i:i + 8].rstrip() == card.keyword), card.keyword)
            raise InvalidFitsFile(f"HDU {index}: malformed header card {image.rstrip()!r}") from None


class _Incomplete(Exception):
    """The file ends early: still being written, or truncated."""


def _data_bytes(header: fits.Header, limits: StructureLimits, index: int) -> int:
    def integer(key: str, default: int | None = None) -> int:
        value = header.get(key, default)
        if value is None:
            raise InvalidFitsFile(f"HDU {index}: missing mandatory keyword {key}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidFitsFile(f"HDU {index}: {key} = {value!r} is not an integer")
        return value

    bitpix = integer("BITPIX")
    if bitpix not in VALID_BITPIX:
        raise InvalidFitsFile(f"HDU {index}: BITPIX = {bitpix} is not a valid FITS value")
    naxis = integer("NAXIS")
    if not 0 <= naxis <= 999:
        raise InvalidFitsFile(f"HDU {index}: NAXIS = {naxis} is out of range")
    if naxis > limits.max_naxis:
        raise InvalidFitsFile(f"HDU {index}: NAXIS = {naxis} exceeds the limit of {limits.max_naxis}")
    if naxis == 0:
        return 0
    axes = [integer(f"NAXIS{i}") for i in range(1, naxis + 1)]
    for i, n in enumerate(axes, start=1):
        if n < 0 or n > limits.max_axis_length:
            raise InvalidFitsFile(f"HDU {index}: NAXIS{i} = {n} is outside 0..{limits.max_axis_length}")
    pcount, gcount = integer("PCOUNT", 0), integer("GCOUNT", 1)
    if pcount < 0 or gcount < 0:
        raise InvalidFitsFile(f"HDU {index}: negative PCOUNT or GCOUNT")
    elements = 1
    for n in axes:
        elements *= n
    return abs(bitpix) // 8 * gcount * (pcount + elements)


def inspect_fits_structure(path: Path, limits: StructureLimits = StructureLimits()) -> FitsStructure | None:
    """Walk the HDUs of ``path`` and return its layout.

    Returns
    -------
    FitsStructure or None
        ``None`` when the file ends before its headers do (it may still be
        being written); otherwise the layout, whose ``is_complete`` says
        whether the size on disk equals the size the headers imply.

    Raises
    ------
    InvalidFitsFile
        The bytes cannot be a FITS file, or they break a limit.
    """
    hdus: list[HduLayout] = []
    offset = 0
    digest = hashlib.blake2b(digest_size=16)
    with open_regular(path) as fh:
        actual = os.fstat(fh.fileno()).st_size
        if actual > limits.max_file_bytes:
            raise InvalidFitsFile(f"file is {actual} bytes, over the limit of {limits.max_file_bytes}")
        head = fh.read(len(SIGNATURE))
        if not SIGNATURE.startswith(head):  # a short prefix may be a file still being written
            raise InvalidFitsFile("not a FITS file: it does not start with 'SIMPLE  ='")
        fh.seek(0)
        while offset < actual or not hdus:
            if len(hdus) >= limits.max_hdus:
                raise InvalidFitsFile(f"more than {limits.max_hdus} HDUs")
            index = len(hdus)
            try:
                header, data_offset = _read_header(fh, offset, limits, index, digest)
            except _Incomplete:
                fh.seek(offset)
                rest = fh.read(len(EXTENSION_SIGNATURE))
                if not hdus or EXTENSION_SIGNATURE.startswith(rest):
                    return None
                raise InvalidFitsFile(
                    f"{actual - offset} bytes after the last HDU are not a valid FITS extension"
                ) from None
            if index == 0 and header.get("SIMPLE") is not True:
                raise InvalidFitsFile("primary header does not declare SIMPLE = T")
            if index > 0 and "XTENSION" not in header:
                raise InvalidFitsFile(f"HDU {index}: extension header lacks XTENSION")
            nbytes = _data_bytes(header, limits, index)
            hdus.append(HduLayout(header, offset, data_offset, nbytes))
            offset = data_offset + _padded(nbytes)
            fh.seek(offset)
            if offset > limits.max_file_bytes:
                raise InvalidFitsFile(f"headers imply {offset} bytes, over the limit of {limits.max_file_bytes}")
    return FitsStructure(hdus=tuple(hdus), expected_size=offset, actual_size=actual,
                         header_digest=digest.digest(), limits=limits)


def reinspect(path: Path, structure: FitsStructure | None, limits: StructureLimits = StructureLimits()
              ) -> FitsStructure | None:
    """What :func:`inspect_fits_structure` says of ``path`` now, given ``structure`` read from it earlier.

    The earlier structure is returned, without parsing the headers again, when it was complete, read
    under the same limits, and the file still has its size and the very same header bytes: the walk
    depends on nothing else, so it would find the same layout. Otherwise the file is inspected again.
    """
    if structure is None or not structure.is_complete or structure.limits != limits or not structure.header_digest:
        return inspect_fits_structure(path, limits)
    digest = hashlib.blake2b(digest_size=16)
    with open_regular(path) as fh:
        if os.fstat(fh.fileno()).st_size != structure.actual_size:
            return inspect_fits_structure(path, limits)
        for hdu in structure.hdus:
            fh.seek(hdu.header_offset)
            digest.update(fh.read(hdu.data_offset - hdu.header_offset))
    if digest.digest() != structure.header_digest:
        return inspect_fits_structure(path, limits)
    return structure
