"""Error types shared by the library and the CLI."""
from __future__ import annotations


class AromniError(Exception):
    """A problem the user can fix (bad input, wrong file, bad option). The CLI prints one line and exits 2."""


class InputError(AromniError):
    """Unreadable, malformed or out-of-range input data."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class CheckpointError(AromniError):
    """A checkpoint that is missing, incomplete, unsafe or of an unknown layout."""


class NotAvailableError(Exception):
    """A feature whose engine is not available (exit 1, not a usage error)."""
