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


class OptionError(AromniError):
    """An option with a bad value. ``option`` is the library's name for it (e.g. ``top_k``); ``message`` says
    what is wrong, with ``{opt}`` where the option is named (prefixed when missing). ``str()`` names the option
    as the library does; the CLI calls ``naming(flag)`` to name the command-line flag instead."""

    def __init__(self, option: str, message: str):
        self.option = option
        self.template = message if "{opt}" in message else "{opt} " + message
        super().__init__(self.naming(option))

    def naming(self, name: str) -> str:
        """The message with the option called ``name``."""
        return self.template.replace("{opt}", name)
