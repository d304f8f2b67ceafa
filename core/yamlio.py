"""The one YAML reader for every YAML file aromni reads: safe types only, no aliases, bounded size and depth.

YAML aliases (``*name``) let a 1 kB file expand to gigabytes ("billion laughs"); aromni's configs never need
them, so any alias is refused (anchors alone are harmless and allowed). Files over ``MAX_BYTES`` and nesting
deeper than ``MAX_DEPTH`` are refused too. Syntax errors stay ``yaml.YAMLError`` for the caller to word.
"""
from __future__ import annotations

import yaml

from .errors import InputError

MAX_BYTES = 1 << 20  # 1 MiB: the largest config aromni ships is under 2 kB
MAX_DEPTH = 64


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and deep nesting while composing (before anything is expanded)."""

    def __init__(self, stream, source: str | None):
        super().__init__(stream)
        self.source, self.depth = source, 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            ev = self.peek_event()
            raise InputError(f"line {ev.start_mark.line + 1}: YAML aliases (*{ev.anchor}) are not accepted",
                             self.source)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise InputError(f"YAML nested deeper than {MAX_DEPTH} levels", self.source)
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def loads(text: str, source: str | None = None):
    """Parse one YAML document from ``text`` (safe types only); ``source`` names it in errors."""
    if len(text) > MAX_BYTES:
        raise InputError(f"YAML text is over {MAX_BYTES // 1024} kB; refused", source)
    loader = _Loader(text, source)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_file(path: str):
    """Read and parse a YAML file (at most ``MAX_BYTES``). OSError and ``yaml.YAMLError`` reach the caller."""
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise InputError(f"YAML file is over {MAX_BYTES // 1024} kB; refused", path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file", path) from None
    return loads(text, path)
