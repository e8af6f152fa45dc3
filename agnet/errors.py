"""Exception types shared by the package.

Every error a user can cause (bad config, malformed dataset file, failed download) is an
:class:`AgnetError`; the command-line program prints its message and exits with status 1
instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


class AgnetError(Exception):
    """Base class for errors reported to the user without a traceback."""


class ConfigError(AgnetError):
    """The workflow configuration is invalid (names the key and what was expected)."""


class DatasetFormatError(AgnetError):
    """A dataset file does not follow its format.

    The message reads ``<file>:<line>: <problem>`` (the line is omitted when the problem is not
    tied to one line), so users can open the offending spot directly.
    """

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path = Path(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else f"{self.path}"
        super().__init__(f"{where}: {problem}")


class DatasetMissingError(AgnetError):
    """A dataset (or one of its required files) is absent; the message says how to obtain it."""


class FetchError(AgnetError):
    """Downloading, checksumming or extracting a dataset archive failed."""
