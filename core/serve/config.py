"""Server options and request limits."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from ..errors import AromniError

DEFAULT_PORT = 8180
API_KEY_ENV = "AROMNI_API_KEY"


@dataclass(frozen=True)
class Limits:
    """Largest request the server accepts (bigger ones get 413 or 400)."""

    body_bytes: int = 50 * 1024 * 1024
    audio_s: float = 600.0
    text_chars: int = 20_000
    n: int = 8
    max_tokens: int = 8192
    messages: int = 256
    sequences: int = 64
    timeout_s: float = 600.0


@dataclass(frozen=True)
class ServeConfig:
    models: tuple[str, ...] = ()  # loaded at start; empty: the bundled model, loaded on first use
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    keep_alive_s: float | None = 600.0  # None: never unload
    max_batch: int = 16  # rows decoded together, and requests running at once
    max_queue: int = 64  # requests waiting for a slot; more get 503
    api_key: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    limits: Limits = field(default_factory=Limits)

    def check(self) -> "ServeConfig":
        if not 0 < self.port < 65536:
            raise AromniError(f"port must be 1..65535 (got {self.port})")
        if self.max_batch < 1:
            raise AromniError(f"max batch must be at least 1 (got {self.max_batch})")
        if self.max_queue < 0:
            raise AromniError(f"max queue must be 0 or more (got {self.max_queue})")
        if not is_loopback(self.host) and not self.api_key:
            raise AromniError(f"binding {self.host} (not a loopback address) needs an API key "
                              f"(api key option or ${API_KEY_ENV})")
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float | None:
    """``"10m"``, ``"30s"``, ``"1h30m"``, ``"90"`` (seconds) -> seconds; ``"-1"``/``"never"`` -> None (forever)."""
    t = str(text).strip().lower()
    if t in ("-1", "never", "forever", "inf"):
        return None
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", t)
    if not parts or "".join(a + b for a, b in parts) != t:
        raise AromniError(f"keep alive {text!r}: expected a duration such as 30s, 10m, 1h, 0 or -1 (never)")
    return sum(float(a) * _UNITS[b] for a, b in parts)
