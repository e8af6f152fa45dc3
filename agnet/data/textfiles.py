"""Tolerant line-oriented reading of the datasets' list files.

The real files mix LF and CRLF, end lines with trailing spaces, and come in UTF-8 or GBK. Readers
see ``(line_number, tokens)`` pairs, 1-based, with blank lines dropped, and raise
:class:`~agnet.errors.DatasetFormatError` naming the file and line for anything malformed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from agnet.errors import DatasetFormatError


def decode_text(path: Path, data: bytes) -> str:
    """Decode ``data`` read from ``path`` as UTF-8 (BOM allowed), falling back to GB18030 (superset of GBK/GB2312)."""
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DatasetFormatError(path, "is neither UTF-8 nor GBK text")


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
