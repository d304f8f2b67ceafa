"""int8 linear kernels on CPU: which one ``--quant int8`` uses, chosen by this measurement.

Candidates for ``y = x @ W.T`` with W stored as int8 rows and one fp32 scale per output channel:

- ``fp32``: the unquantised matmul (reference);
- ``int_mm``: activations quantised per row to int8 at each call, ``torch._int_mm`` (int8 x int8 -> int32), scaled;
- ``fbgemm``: ``torch.ops.quantized.linear_dynamic`` on a per-channel qint8 weight (what
  ``torch.ao.quantization.quantize_dynamic`` builds; quantised tensors are deprecated in torch 2.13);
- ``int8pack``: ``torch._weight_int8pack_mm`` (weight-only, activations stay fp32);
- ``dequant``: ``x @ (q.float() * scale).T`` (weight-only, dequantised at each call).

Rounds are interleaved (each round times every candidate once, in turn), so a machine that gets busier or
quieter part-way affects all alike; the table gives each candidate's median time per call and its median
per-round speed-up over fp32, plus its relative output error ``|y - y_fp32| / |y_fp32|``.

    python benchmarks/bench_quant.py                 # one thread (default), the shapes below
    python benchmarks/bench_quant.py --threads 2 --rounds 20
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

# (name, M, K, N): the 1x1024 @ 1024x4096 GEMV, the bundled model's (small config) shapes at batch 1 and 8
SHAPES = [
    ("gemv 1024->4096", 1, 1024, 4096),
    ("small wq/wo 320->320", 1, 320, 320),
    ("small wk/wv 320->64", 1, 320, 64),
    ("small w1/w3 320->864", 1, 320, 864),
    ("small w2 864->320", 1, 864, 320),
    ("small head 320->2624", 1, 320, 2624),
    ("small w1/w3 batch 8", 8, 320, 864),
    ("100m w1/w3 640->1728", 1, 640, 1728),
]


def candidates(w: torch.Tensor) -> dict:
    scale = w.abs().amax(1).clamp_min(1e-12) / 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    qt = q.t()
    out = {"fp32": lambda x: x @ w.t()}

    def int_mm(x):
        xs = x.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
        xq = torch.round(x / xs).to(torch.int8)
        return torch._int_mm(xq, qt) * (xs * scale)
    out["int_mm"] = int_mm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qw = torch.quantize_per_channel(w, scale.double(), torch.zeros(len(scale), dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qw, None)
    out["fbgemm"] = lambda x: torch.ops.quantized.linear_dynamic(x, packed, True)
    out["int8pack"] = lambda x: torch._weight_int8pack_mm(x, q, scale)
    out["dequant"] = lambda x: x @ (q.float() * scale[:, None]).t()
    return out


def time_call(fn, x, min_s: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        fn(x)
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return dt / n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--min-time", type=float, default=0.02, help="seconds per timed sample")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"# {a.threads} thread(s), {a.rounds} interleaved rounds, torch {torch.__version__}")
    print("| shape | " + " | ".join(["fp32 us", "int_mm", "fbgemm", "int8pack", "dequant"]) + " |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for name, M, K, N in SHAPES:
            w, x = torch.randn(N, K) * 0.02, torch.randn(M, K)
            c = candidates(w)
            ref = c["fp32"](x)
            err = {k: float((f(x) - ref).norm() / ref.norm()) for k, f in c.items()}
            for f in c.values():  # warm-up
                time_call(f, x, 0.005)
            times = {k: [] for k in c}
            for _ in range(a.rounds):
                for k, f in c.items():
                    times[k].append(time_call(f, x, a.min_time))
            cells = [f"{statistics.median(times['fp32']) * 1e6:.0f}"]
            for k in list(c)[1:]:
                ratio = statistics.median(f / t for f, t in zip(times["fp32"], times[k]))
                cells.append(f"{statistics.median(times[k]) * 1e6:.0f} us ({ratio:.2f}x, err {err[k]:.3f})")
            print(f"| {name} ({M}x{K} @ {K}x{N}) | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
