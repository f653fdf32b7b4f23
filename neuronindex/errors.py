"""One exception hierarchy for everything a user can get wrong.

Each class carries the CLI exit code and the HTTP status it maps to, so the edges (click CLI,
HTTP service) translate errors once and never show a traceback for a user mistake.
"""
from __future__ import annotations

import difflib
import errno
import shutil
from collections.abc import Iterable


class NeuronIndexError(Exception):
    """Base class: a problem the user can fix; the message says what and how."""

    exit_code = 1
    http_status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(NeuronIndexError):
    """A malformed argument or option value."""

    exit_code = 2


class NotFoundError(NeuronIndexError):
    """A named thing (file, layer, neuron, model) does not exist."""

    exit_code = 3
    http_status = 404


class IndexNotFoundError(NotFoundError):
    pass


class SchemaVersionError(NeuronIndexError):
    """The index was written by an older or newer neuronindex."""

    exit_code = 4
    http_status = 409


class ModelError(NeuronIndexError):
    """A model spec, checkpoint or weights name that cannot be loaded."""

    exit_code = 5


class LayerError(NotFoundError):
    """An unknown layer name."""


class DataError(NeuronIndexError):
    """An image source that cannot be read."""

    exit_code = 6


class QueryError(NeuronIndexError):
    """A malformed or refused query (search language or SQL)."""

    exit_code = 7


class QueryTimeout(QueryError):
    http_status = 408


class IndexBusyError(NeuronIndexError):
    """Another process is writing the index (and the caller chose not to wait)."""

    exit_code = 9
    http_status = 409


class BusyError(NeuronIndexError):
    """The service has every worker busy and its queue full: retry later."""

    exit_code = 9
    http_status = 503


class IngestError(NeuronIndexError):
    exit_code = 8
    http_status = 500


class StaleVectorsError(NeuronIndexError):
    exit_code = 9
    http_status = 409


class ForeignSQLError(NeuronIndexError):
    """The index holds SQL (views, macros) that neuronindex did not write: it is not run."""
    exit_code = 10
    http_status = 409


class DiskFullError(NeuronIndexError):
    """No space left where a write went; what was published before is intact."""
    exit_code = 11
    http_status = 507


def disk_full(exc: BaseException, where=None) -> bool:
    """An error that says the disk (or a quota) is full: OSError ENOSPC / EDQUOT, DuckDB's IO error
    wrapping it, or DuckDB failing to spill to a temp folder on a disk with (almost) no room left
    (`where`: a path on that disk)."""

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "duckdb" not in type(exc).__module__:
        return False
    text = str(exc).lower()
    if "no space left" in text or "disk quota" in text or "disk is full" in text:
        return True
    if where is not None and "failed to offload" in text:
        try:
            return shutil.disk_usage(where).free < 64 * 2**20
        except OSError:
            return False
    return False


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean a, b?)' for the closest choices, or '' when nothing is close."""
    choices = list(dict.fromkeys(choices))
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.5)
    if not close:
        lower = word.lower()
        close = [c for c in choices if lower in c.lower()][:n]
    return f" (did you mean {', '.join(close)}?)" if close else ""
