"""`aromni tokenize-audio`."""
from __future__ import annotations

from aromni.core.errors import NotAvailableError


def run() -> None:
    """Not yet available."""
    raise NotAvailableError("'aromni tokenize-audio' is not yet available in this build")
