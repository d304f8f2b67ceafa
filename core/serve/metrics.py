"""Request counters and the Prometheus text of ``GET /metrics``."""
from __future__ import annotations

import threading
from collections import Counter, defaultdict


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()  # (path, status) -> count
        self.seconds: defaultdict[str, float] = defaultdict(float)  # path -> total seconds
        self._lock = threading.Lock()

    def record(self, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(path, int(status))] += 1
            self.seconds[path] += seconds

    def text(self, waiting: int, active: int, engine: dict) -> str:
        """Prometheus exposition format (version 0.0.4)."""
        out = [
            "# HELP aromni_queue_length Requests waiting for a request slot.",
            "# TYPE aromni_queue_length gauge",
            f"aromni_queue_length {waiting}",
            "# HELP aromni_active_requests Requests being served.",
            "# TYPE aromni_active_requests gauge",
            f"aromni_active_requests {active}",
            "# HELP aromni_queued_rows Decoding rows waiting to join the running batch.",
            "# TYPE aromni_queued_rows gauge",
            f"aromni_queued_rows {engine['queued_rows']}",
            "# HELP aromni_running_rows Decoding rows in the running batches (a row leaves as it finishes).",
            "# TYPE aromni_running_rows gauge",
            f"aromni_running_rows {engine['running_rows']}",
            "# HELP aromni_tokens_per_second Tokens per second decoded over the last second (0 when idle).",
            "# TYPE aromni_tokens_per_second gauge",
            f"aromni_tokens_per_second {engine['tokens_per_s']:.3f}",
            "# HELP aromni_generated_tokens_total Tokens generated since start.",
            "# TYPE aromni_generated_tokens_total counter",
            f"aromni_generated_tokens_total {engine['tokens']}",
            "# HELP aromni_batches_total Decoding steps run (batched rows / steps: the mean batch size).",
            "# TYPE aromni_batches_total counter",
            f"aromni_batches_total {engine['batches']}",
            "# HELP aromni_batched_rows_total Rows decoded, summed over steps.",
            "# TYPE aromni_batched_rows_total counter",
            f"aromni_batched_rows_total {engine['rows']}",
            "# HELP aromni_batched_rows_max The most rows decoded in one step so far.",
            "# TYPE aromni_batched_rows_max gauge",
            f"aromni_batched_rows_max {engine['max_rows']}",
            "# HELP aromni_models_loaded Models in memory.",
            "# TYPE aromni_models_loaded gauge",
            f"aromni_models_loaded {engine['loaded']}",
            "# HELP aromni_requests_total Requests answered, by path and HTTP status.",
            "# TYPE aromni_requests_total counter",
        ]
        with self._lock:
            for (path, status), n in sorted(self.requests.items()):
                out.append(f'aromni_requests_total{{path="{path}",status="{status}"}} {n}')
            out += ["# HELP aromni_request_seconds_total Time spent answering requests, by path.",
                    "# TYPE aromni_request_seconds_total counter"]
            for path, s in sorted(self.seconds.items()):
                out.append(f'aromni_request_seconds_total{{path="{path}"}} {s:.3f}')
        return "\n".join(out) + "\n"
