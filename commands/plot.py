"""`aromni plot`."""
from __future__ import annotations

from aromni.core.errors import NotAvailableError


def run() -> None:
    """Not yet available."""
    raise NotAvailableError("'aromni plot' is not yet available in this build")
