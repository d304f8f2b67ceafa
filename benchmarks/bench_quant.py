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

It also prints the 7B model's weight memory per format (from shapes), the int8 logits drift of a random
100M-shaped model, and the batch-1 decode step of the bundled and the 100M model in fp32 and int8. With
``--agreement`` it compares the bundled model's greedy output (TTS, T2I, caption on held-out corpus prompts) of
fp32 and each int8 variant of ``--variants`` (``quant_variants.py``), with each variant's decode-step speed-up:

    python benchmarks/bench_quant.py --agreement --no-kernels --prompts 24 --variants int8,int8-no-w2,w16a16
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


def weight_memory(config: str = "7b") -> dict[str, float]:
    """GB of a model's weights per format, from its shapes (no weights made): linear layers quantised as
    ``core.quant`` stores them (int8: 1 byte + one fp32 scale per output channel; int4: half a byte + a bf16
    scale and offset per group of 128), embeddings and norms in bf16."""
    from aromni.core.model import Transformer, get_config
    from aromni.core.quant import INT4_GROUP

    with torch.device("meta"):
        m = Transformer(get_config(config))
    lin = [mod.weight.shape for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    rest = sum(p.numel() for p in m.parameters()) - sum(n * k for n, k in lin)
    out = {"bf16": 2 * (rest + sum(n * k for n, k in lin)),
           "int8": 2 * rest + sum(n * k + 4 * n for n, k in lin),
           "int4": 2 * rest + sum(n * k // 2 + (k // INT4_GROUP) * n * 4 for n, k in lin)}
    return {k: v / 1e9 for k, v in out.items()}


def drift(config: str = "100m", tokens: int = 64, seed: int = 0) -> dict[str, float]:
    """fp32 vs ``quantize(..., "int8")`` logits of a random model of ``config`` on random tokens."""
    import copy

    from aromni.core.model import build_model, get_config
    from aromni.core.quant import quantize

    m = build_model(get_config(config, max_seq_len=max(tokens, 16)), seed=seed)
    q = quantize(copy.deepcopy(m), "int8")
    ids = torch.randint(0, m.cfg.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        a, b = m(ids), q(ids)
    return {"rel_l2": float((b - a).norm() / a.norm()), "max_abs": float((b - a).abs().max()),
            "logit_std": float(a.std()), "argmax_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def step_times(config: str, rounds: int, steps: int = 32) -> tuple[float, float, float]:
    """Median ms of a batch-1 decode step, fp32 and int8, and the median per-round speed-up (interleaved)."""
    import copy

    from aromni.core.model import build_model, get_config
    from aromni.core.quant import quantize

    if config == "bundled":
        from aromni.core.api import load
        m = load(None, device="cpu", dtype="fp32", tokenizers=False).model
    else:
        m = build_model(get_config(config, max_seq_len=256))
    q = quantize(copy.deepcopy(m), "int8")
    ids = torch.randint(0, m.cfg.vocab_size, (1, steps + 8), generator=torch.Generator().manual_seed(0))

    def run(model) -> float:
        st = model.setup_cache(1, steps + 8)
        model(ids[:, :8], st)
        t0 = time.perf_counter()
        for i in range(steps):
            model(ids[:, 8 + i: 9 + i], st)
        return (time.perf_counter() - t0) / steps * 1000

    fp, i8 = [], []
    with torch.inference_mode():
        run(m), run(q)
        for _ in range(rounds):
            fp.append(run(m))
            i8.append(run(q))
    return statistics.median(fp), statistics.median(i8), statistics.median(f / t for f, t in zip(fp, i8))


def eval_prompts(data: str | None, n: int) -> dict[str, list]:
    """Held-out prompts of an ``aromni corpus`` manifest, up to ``n`` per task: TTS texts (the held-out
    sentences), T2I texts and caption images. ``data`` None: a corpus without speech is built in a temporary
    folder (``preset="ci"`` with 48 held-out scenes, seed 0)."""
    import json
    import os
    import tempfile

    from PIL import Image

    from aromni.core.corpus.build import build_corpus

    tmp = None
    if data is None:
        tmp = tempfile.TemporaryDirectory()
        build_corpus(tmp.name, seed=0, preset="ci", speech=False, heldout_scenes=48, max_sentences=200)
        data = os.path.join(tmp.name, "heldout.jsonl")
    with open(data) as f:
        rows = [json.loads(line) for line in f]
    rows = [r for r in rows if r.get("split", "heldout") == "heldout"]
    out = {"tts": [r["text"] for r in rows if r["task"] == "text"][:n],
           "t2i": [r["text"] for r in rows if r["task"] == "t2i"][:n],
           "caption": [Image.open(os.path.join(os.path.dirname(data), r["image"])).convert("RGB")
                       for r in rows if r["task"] == "caption"][:n]}
    if tmp is not None:
        tmp.cleanup()
    return out


def greedy_runs(omni, prompts: dict[str, list]) -> list[tuple[str, list[int], list[int]]]:
    """(task, prompt, response) of every greedy decode (one candidate) of TTS, T2I and caption on ``prompts``."""
    from aromni.core import tasks
    from aromni.core.decoding import options_for
    from aromni.core.generate import generate

    log: list = []
    task = [""]

    def engine(model, vocab, ps, opts, **kw):
        g = generate(model, vocab, ps, opts, **kw)
        log.extend((task[0], list(p), list(t)) for p, t in zip(ps, g.tokens))
        return g
    omni.engine = engine
    task[0] = "tts"
    for t in prompts["tts"]:
        tasks.tts(omni, t, options_for("tts", greedy=True, candidates=1), seed=0)
    task[0] = "t2i"
    tasks.t2i(omni, prompts["t2i"], opts=options_for("t2i", image_greedy=True, candidates=1), seed=0)
    task[0] = "caption"
    tasks.caption(omni, prompts["caption"], options_for("caption", greedy=True), seed=0)
    return log


def agreement_of(fp, q, ref: list, got: list) -> dict[str, tuple[float, float, int]]:
    """Per task and ``"all"``: (share of fp32's tokens the quantised run reproduces position by position,
    share of fp32's greedy steps where the quantised model picks the same next token given fp32's history,
    fp32's token count)."""
    acc: dict[str, list[int]] = {}
    with torch.inference_mode():
        for (task, p, t), (_, _, t8) in zip(ref, got):
            ids = torch.tensor([p + t])
            a = fp.model(ids)[0, len(p) - 1:-1].argmax(-1)
            b = q.model(ids)[0, len(p) - 1:-1].argmax(-1)
            for k in (task, "all"):
                r = acc.setdefault(k, [0, 0, 0])
                r[0] += sum(x == y for x, y in zip(t, t8))
                r[1] += int((a == b).sum())
                r[2] += len(t)
    return {k: (f / n, s / n, n) for k, (f, s, n) in acc.items()}


def agreement(variants: list[str], data: str | None = None, n: int = 48) -> dict[str, dict]:
    """Greedy agreement of each int8 ``variants`` (see ``quant_variants``) with fp32 on the bundled model."""
    import copy

    from aromni.core.api import load
    from quant_variants import build as build_variant

    prompts = eval_prompts(data, n)
    fp = load(None, device="cpu", dtype="fp32")
    ref = greedy_runs(fp, prompts)
    out = {}
    for v in variants:
        q = copy.copy(fp)
        q.model = build_variant(v, copy.deepcopy(fp.model))
        out[v] = agreement_of(fp, q, ref, greedy_runs(q, prompts))
    return out


def variant_steps(variants: list[str], rounds: int, steps: int = 32) -> dict[str, tuple[float, float]]:
    """Bundled model batch-1 decode step of fp32 and each variant, interleaved: {name: (median ms, median
    per-round speed-up over fp32)}."""
    import copy

    from aromni.core.api import load
    from quant_variants import build as build_variant

    m = load(None, device="cpu", dtype="fp32", tokenizers=False).model
    models = {"fp32": m} | {v: build_variant(v, copy.deepcopy(m)) for v in variants}
    ids = torch.randint(0, m.cfg.vocab_size, (1, steps + 8), generator=torch.Generator().manual_seed(0))

    def run(model) -> float:
        st = model.setup_cache(1, steps + 8)
        model(ids[:, :8], st)
        t0 = time.perf_counter()
        for i in range(steps):
            model(ids[:, 8 + i: 9 + i], st)
        return (time.perf_counter() - t0) / steps * 1000

    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for mod in models.values():
            run(mod)
        for _ in range(rounds):
            for k, mod in models.items():
                times[k].append(run(mod))
    return {k: (statistics.median(ts), statistics.median(f / t for f, t in zip(times["fp32"], ts)))
            for k, ts in times.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--min-time", type=float, default=0.02, help="seconds per timed sample")
    ap.add_argument("--no-kernels", action="store_true", help="skip the kernel table")
    ap.add_argument("--agreement", action="store_true", help="also the bundled model's greedy agreement (slow)")
    ap.add_argument("--variants", default="int8",
                    help="comma-separated int8 variants for --agreement and their decode step (quant_variants.py)")
    ap.add_argument("--data", default=None, help="held-out manifest for --agreement (default: a corpus built here)")
    ap.add_argument("--prompts", type=int, default=48, help="held-out prompts per task for --agreement")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    mem = weight_memory("7b")
    print("# 7B weights from shapes: " + ", ".join(f"{k} {v:.2f} GB" for k, v in mem.items()))
    d = drift("100m")
    print(f"# 100m random weights, int8 vs fp32 logits over 64 random tokens: relative L2 {d['rel_l2']:.4f}, "
          f"max |diff| {d['max_abs']:.4f} (logit std {d['logit_std']:.3f}), argmax agreement {d['argmax_agree']:.3f}")
    for cfg in ("bundled", "100m"):
        fp, i8, ratio = step_times(cfg, max(3, a.rounds // 3))
        print(f"# {cfg} batch-1 decode step, {a.threads} thread(s): fp32 {fp:.2f} ms, int8 {i8:.2f} ms "
              f"({ratio:.2f}x)", flush=True)
    if a.agreement:
        names = a.variants.split(",")
        steps = variant_steps(names, max(3, a.rounds))
        print(f"# bundled model, greedy, {a.prompts} held-out prompts per task; free-running = fp32 tokens "
              f"reproduced, forced = same next-token choice given fp32's history; step: batch-1 decode, "
              f"{a.threads} thread(s), interleaved, fp32 {steps['fp32'][0]:.2f} ms", flush=True)
        print("| variant | tts free / forced | t2i free / forced | caption free / forced | all free / forced "
              "| step ms (speed-up) |")
        print("|---|---|---|---|---|---|")
        for v, res in agreement(names, a.data, a.prompts).items():
            cells = [f"{res[k][0]:.1%} / {res[k][1]:.1%}" for k in ("tts", "t2i", "caption", "all")]
            print(f"| {v} | " + " | ".join(cells) + f" | {steps[v][0]:.2f} ({steps[v][1]:.2f}x) |", flush=True)
    if a.no_kernels:
        return
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
