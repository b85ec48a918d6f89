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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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


class ChecksumMismatch(InvalidFitsFile):
    """The declared CHECKSUM/DATASUM do not match: a corrupted file, or one whose writer has not finished."""


@dataclass(frozen=True)
class StructureLimits:
    max_file_bytes: int = 4 * 2**30
    max_hdus: int = 16
    max_header_blocks: int = 100  # 3600 cards per header
    max_axis_length: int = 65536
    max_naxis: int = 3


#: cards that hold no keyword value (astropy gives them as lists, not values)
COMMENTARY = frozenset({"COMMENT", "HISTORY", ""})


class HeaderValues(Mapping):
    """Each keyword's value (its first card's), looked up the way astropy's ``Header`` does: in any case, with or
    without ``HIERARCH``.

    Ingest reads a hundred values of every frame it describes; through ``fits.Header`` each read re-checks its
    card and consults astropy's configuration (about 6 µs each, a tenth of describing a frame), while the values
    were already parsed once, card by card, when the header was read (:func:`_verify_values`).
    """

    def __init__(self, items: Iterable[tuple[str, object]]):
        self._values: dict[str, object] = {}
        for keyword, value in items:
            self._values.setdefault(self._normal(keyword), value)

    @staticmethod
    def _normal(keyword: str) -> str:
        keyword = keyword.strip().upper()
        return keyword[9:].strip() if keyword.startswith("HIERARCH ") else keyword

    def __getitem__(self, keyword: str):
        return self._values[self._normal(keyword)]

    def __contains__(self, keyword) -> bool:
        return isinstance(keyword, str) and self._normal(keyword) in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@dataclass(frozen=True)
class HduLayout:
    header_offset: int
    data_offset: int
    data_bytes: int  # unpadded
    #: the header's cards as written (80 characters each, up to and including END)
    card_images: str = field(repr=False)
    values: HeaderValues = field(repr=False, compare=False)

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The data array's shape, slowest axis first (NumPy order: ``NAXISn, ..., NAXIS1``)."""
        return tuple(int(self.values[f"NAXIS{i}"]) for i in range(int(self.values.get("NAXIS", 0)), 0, -1))


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
    def primary(self) -> HduLayout:
        return self.hdus[0]


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


def _read_header(fh, offset: int, limits: StructureLimits, index: int, digest=None
                 ) -> tuple[str, HeaderValues, int]:
    """Header starting at ``offset``; returns its cards' text, their values and the offset of its data
    (``digest``: updated with its blocks)."""
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
                values = _verify_values(header, text, index)
                if digest is not None:
                    digest.update(raw)
                return text, values, offset + len(raw)
    raise InvalidFitsFile(f"HDU {index}: no END card within {limits.max_header_blocks} header blocks")


def _verify_values(header: fits.Header, text: str, index: int) -> HeaderValues:
    """Every card's value must parse: astropy parses lazily, and would fail later, far from the cause.
    Returns the values parsed.

    The card is quoted from ``text`` as it was written: astropy rewrites a card it failed to parse.
    """
    values = []
    for card in header.cards:
        try:
            value = card.value
            if card.keyword not in COMMENTARY:
                values.append((card.keyword, value))
        except Exception:  # VerifyError or ValueError, depending on how the card is broken
            image = next((text[i:i + CARD] for i in range(0, len(text), CARD)
                          if text[i:i + 8].rstrip() == card.keyword), card.keyword)
            raise InvalidFitsFile(f"HDU {index}: malformed header card {image.rstrip()!r}") from None
    return HeaderValues(values)


class _Incomplete(Exception):
    """The file ends early: still being written, or truncated."""


def _data_bytes(header: HeaderValues, limits: StructureLimits, index: int) -> int:
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
                card_images, header, data_offset = _read_header(fh, offset, limits, index, digest)
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
            hdus.append(HduLayout(offset, data_offset, nbytes, card_images, header))
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


# --- checksums (FITS Standard 4.0, appendix J) --------------------------------------------------------------------------
# By hand rather than astropy's ``verify_checksum``: that re-serializes the header, re-verifying every card (a third
# of describing a small frame), where the standard's sum is over the bytes as written, which we have.

#: the sum of an HDU whose CHECKSUM holds: ones' complement negative zero
NEGATIVE_ZERO = 0xFFFFFFFF
_CHUNK = BLOCK * 2048  # ~5.9 MB read at a time: a multiple of the 4-byte words summed


def ones_complement_sum(fh, start: int, length: int) -> int:
    """The 32-bit ones' complement sum of the big-endian 32-bit words in ``length`` bytes of ``fh`` from ``start``.

    ``length`` is a multiple of 4 (FITS blocks are); the file must hold all of it.

    Examples
    --------
    >>> import io
    >>> ones_complement_sum(io.BytesIO(bytes.fromhex("ffffffff00000002")), 0, 8)  # the carry goes round
    2
    """
    fh.seek(start)
    total = 0
    while length > 0:
        block = fh.read(min(_CHUNK, length))
        if not block or len(block) % 4:
            raise InvalidFitsFile("the file ends inside an HDU whose checksum it declares")
        total += int(np.frombuffer(block, dtype=">u4").sum(dtype=np.uint64))
        length -= len(block)
    return _fold(total)


def _fold(total: int) -> int:
    """End-around carry: a sum of 32-bit words reduced to 32 bits in ones' complement arithmetic."""
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def verify_checksums(fh, structure: FitsStructure) -> None:
    """Each HDU's declared DATASUM (the sum of its data blocks) and CHECKSUM (the whole HDU sums to -0) must hold.

    Raises
    ------
    ChecksumMismatch
        A declared sum does not match the bytes.
    InvalidFitsFile
        A DATASUM that is not an unsigned integer.
    """
    for index, hdu in enumerate(structure.hdus):
        declares_data, declares_hdu = "DATASUM" in hdu.values, "CHECKSUM" in hdu.values
        if not (declares_data or declares_hdu):
            continue
        data_sum = ones_complement_sum(fh, hdu.data_offset, _padded(hdu.data_bytes))
        if declares_data and _declared_datasum(hdu.values["DATASUM"], index) != data_sum:
            raise ChecksumMismatch(f"HDU {index}: DATASUM does not match the data (corrupted, or still being written)")
        header_sum = ones_complement_sum(fh, hdu.header_offset, hdu.data_offset - hdu.header_offset)
        if declares_hdu and _fold(header_sum + data_sum) != NEGATIVE_ZERO:
            raise ChecksumMismatch(f"HDU {index}: CHECKSUM does not match the HDU (corrupted, or still being written)")


def _declared_datasum(value, index: int) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) > 0xFFFFFFFF:
        raise InvalidFitsFile(f"HDU {index}: DATASUM = {value!r} is not an unsigned 32-bit integer")
    return int(text)
