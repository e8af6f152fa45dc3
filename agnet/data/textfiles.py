"""Tolerant line-oriented reading of the datasets' list files.

The real files mix LF and CRLF, end lines with trailing spaces, and come in UTF-8 or GBK (the XML
declares gb2312). Other encodings are refused, not guessed. Readers see ``(line_number, tokens)``
pairs, 1-based, with blank lines dropped, and raise :class:`~agnet.errors.DatasetFormatError`
naming the file and line for anything malformed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from agnet.errors import DatasetFormatError

# A GBK text file read byte by byte: ASCII, or a lead byte 0x81-0xFE with a trail byte 0x80-0xFE. GBK also allows
# trail bytes 0x40-0x7E (rare characters outside GB2312), but Latin-1/Windows-1252 text puts exactly that pattern
# in every word with an accent ("gr\xfcn": 0xFC then 'n'), so such files are not guessed at.
_GBK_WITHOUT_ASCII_TRAILS = re.compile(rb"(?:[\x00-\x7f]|[\x81-\xfe][\x80-\xfe])*")


def decode_text(path: Path, data: bytes) -> str:
    """Decode ``data`` read from ``path``: UTF-8 (BOM allowed), else GBK (which covers GB2312).

    GBK is accepted only when no two-byte character has an ASCII trail byte, the signature of
    Latin-1 or Windows-1252 text, which GBK would otherwise turn into plausible-looking Chinese.
    Anything else is refused, naming the line and byte, with the advice to re-save as UTF-8.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        first_bad = error.start
    if _GBK_WITHOUT_ASCII_TRAILS.fullmatch(data):
        try:
            return data.decode("gbk")
        except UnicodeDecodeError:
            pass
    line = data.count(b"\n", 0, first_bad) + 1
    start = data.rfind(b"\n", 0, first_bad) + 1
    end = data.find(b"\n", first_bad)
    excerpt = data[start : end if end != -1 else len(data)].rstrip(b"\r")
    raise DatasetFormatError(
        path,
        f"is not UTF-8 text (byte 0x{data[first_bad]:02X} in {excerpt!r}), nor GBK that could not as well be "
        "Latin-1/Windows-1252; re-save the file as UTF-8",
        line,
    )


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise an error saying what the file should hold."""
    if not path.is_file():
        raise DatasetFormatError(path, f"required file is missing (expected {what})")
    return path


def token_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, tokens)`` for each non-blank line, split on any whitespace."""
    text = decode_text(path, path.read_bytes())
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if tokens:
            yield number, tokens


def parse_int(path: Path, line: int, token: str, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """Parse ``token`` as an integer ``what`` in ``[lo, hi]``, or raise an error naming file and line."""
    try:
        value = int(token)
    except ValueError:
        raise DatasetFormatError(path, f"expected {what} (an integer), got {token!r}", line) from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise DatasetFormatError(path, f"{what} {value} is out of range (expected {bounds})", line)
    return value


def expect_fields(path: Path, line: int, tokens: list[str], count: int, layout: str) -> list[str]:
    """Check that a line has exactly ``count`` fields laid out as ``layout``."""
    if len(tokens) != count:
        raise DatasetFormatError(
            path, f"expected {count} fields '{layout}', got {len(tokens)}: {' '.join(tokens)!r}", line
        )
    return tokens
