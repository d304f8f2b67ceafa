"""Decoding speed: aromni's engine vs transformers' ChameleonForConditionalGeneration.generate, same weights.

Prints prefill tok/s, decode tok/s at batch 1 and 8, first-token latency (both engines, greedy, same prompts,
same number of new tokens, tokens compared), and the TTS real-time factor of aromni with the full-size
WavTokenizer decoder streaming (random weights: speed only).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_decode.py            # "100m" on CPU, ~3-4 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_decode.py --lm-step --prompt 32 --new 100 --reps 5
                                                   # bundled model: ms per decode step (add --dtype bf16, --compile)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_decode.py --fusion   # fused vs separate projections
    .venv/bin/python benchmarks/bench_decode.py --device cuda --config 1b --compile   # static cache + CUDA graphs

Definitions: decode tok/s = rows * (new - 1) / (total time - time to first token); first-token latency = prompt
submitted -> first generated token (prefill + one selection); TTS RTF = wall time (generation + streamed codec
decode) / seconds of audio.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def hf_model(model, layout):
    """The same weights in transformers' mainline Chameleon layout (core/convert.py)."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    from aromni.core.convert import from_aromni
    from aromni.core.export import hf_config

    conf = hf_config(model.cfg, "hf", layout, dtype=model.tok_embeddings.weight.dtype)
    conf.pop("architectures", None)
    conf.pop("torch_dtype", None)
    hf = ChameleonForConditionalGeneration(ChameleonConfig(**conf))
    state = {k: v for k, v in from_aromni(model.state_dict(), "hf", model.cfg).items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if "vqmodel" not in k]
    assert not missing and not unexpected, (missing, unexpected)
    return hf.to(model.tok_embeddings.weight.device, model.tok_embeddings.weight.dtype).eval()


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run_ours(model, layout, prompts, new, compile_: bool):
    from aromni.core.decoding import options_for
    from aromni.core.generate import generate

    # the reference text mask (everything but image codes, as transformers' Chameleon), greedy, no penalty,
    # no stop tokens: exactly `new` tokens per row
    opts = options_for("text", compat=True, greedy=True, repetition_penalty=1.0, images=False, cfg=False,
                       max_new_tokens=new, stop=(), compile=compile_)
    g = generate(model, layout, prompts, opts, seeds=list(range(len(prompts))))
    total = g.prefill_s + g.decode_s
    return {"prefill_s": g.prefill_s, "first_s": g.first_token_s, "total_s": total, "tokens": g.tokens}


@torch.no_grad()
def run_hf(hf, prompts, new, dev):
    ids = torch.tensor(prompts, device=dev)
    mask = torch.ones_like(ids)
    kw = dict(do_sample=False, pad_token_id=1, eos_token_id=None, attention_mask=mask)
    sync(dev)
    t0 = time.perf_counter()
    hf.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
    sync(dev)
    t1 = time.perf_counter()
    out = hf.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
    sync(dev)
    t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "first_s": t1 - t0, "total_s": t2 - t1,
            "tokens": out[:, ids.shape[1]:].tolist()}


def rates(r, rows, plen, new):
    dec = rows * (new - 1) / max(r["total_s"] - r["first_s"], 1e-9)
    return {"prefill": rows * plen / r["prefill_s"], "decode": dec, "first_ms": r["first_s"] * 1000}


def best(fn, reps):
    runs = [fn() for _ in range(reps)]
    return min(runs, key=lambda r: r["total_s"])


def tts_rtf(model, layout, dev, speech_tokens: int):
    from aromni.core import tasks
    from aromni.core.bundle import Omni
    from aromni.core.decoding import options_for
    from aromni.core.speech_tokenizer import build_speech_tokenizer
    from aromni.core.text_tokenizer import ByteTokenizer

    speech = build_speech_tokenizer("wavtokenizer-24k-40", seed=0, device=dev)
    omni = Omni(model=model, vocab=layout, text=ByteTokenizer(offset=layout.text_start), speech=speech)
    # a random model may close <boa> early: keep the stop, but measure whatever audio comes out
    opts = options_for("tts", max_speech_tokens=speech_tokens, max_new_tokens=speech_tokens + 1)
    tasks.tts(omni, "Warm up.", opts, seed=0)
    r = tasks.tts(omni, "This sentence is spoken to measure the real-time factor.", opts, seed=0)
    return r.stats


def lm_step(batches: list[int], new: int, reps: int, compile_: bool, dtype: torch.dtype = torch.float32,
            prompt: int = 32) -> dict:
    """(ms per decode step, ms of prefill) of the bundled model, medians of ``reps`` runs: greedy text rows
    (``prompt`` tokens, no stop) at each batch size, and one t2i row (3 CFG streams, sampling). The step is the
    whole engine step (model + token choice)."""
    from aromni.core.api import default_model_path
    from aromni.core.bundle import load_bundle
    from aromni.core.decoding import options_for
    from aromni.core.generate import generate

    omni = load_bundle(default_model_path(), tokenizers=False, dtype=dtype)
    m, v = omni.model, omni.vocab
    g = torch.Generator().manual_seed(0)
    text = lambda n: (v.text_start + torch.randint(v.text_end - v.text_start, (n,), generator=g)).tolist()  # noqa
    runs = {}
    for B in batches:
        prompts = [[v.bos] + text(prompt - 1) for _ in range(B)]
        opts = options_for("text", compat=True, greedy=True, repetition_penalty=1.0, images=False, cfg=False,
                           max_new_tokens=new, stop=(), compile=compile_)
        runs[f"text b{B}"] = (prompts, opts)
    runs["t2i b1 (3 streams)"] = ([[v.bos] + text(15) + [v.boi]], options_for("t2i", compile=compile_))
    out = {}
    for name, (prompts, opts) in runs.items():
        generate(m, v, prompts, opts.replace(max_new_tokens=4) if "text" in name else opts, seeds=[0] * len(prompts))
        ms, pre = [], []
        for _ in range(reps):
            r = generate(m, v, prompts, opts, seeds=list(range(len(prompts))))
            ms.append(r.decode_s / max(r.steps, 1) * 1000)
            pre.append(r.prefill_s * 1000)
        out[name] = (sorted(ms)[len(ms) // 2], sorted(pre)[len(pre) // 2])
    return out


def fusion(reps: int = 2000) -> None:
    """One layer's q/k/v and gate/up projections at decode shapes of the bundled model and the 100m config:
    separate weights (as stored) vs one fused weight per group, best of 5 interleaved rounds."""
    from aromni.core.model import get_config

    for name, B in (("small", 1), ("small", 8), ("100m", 1)):
        c = get_config(name)
        best = _fusion_layer(B, c.dim, c.n_kv_heads * c.head_dim, c.intermediate_size, reps)
        print(f"{name:<6} batch {B}: separate {best['separate']:.1f} us, fused {best['fused']:.1f} us per layer "
              f"(fused is {best['separate'] / best['fused']:.2f}x as fast)")


def _fusion_layer(B: int, d: int, kv: int, f: int, reps: int) -> dict:
    import torch.nn.functional as F

    x = torch.randn(B, 1, d)
    wq, wk, wv, w1, w3 = (torch.randn(n, d) for n in (d, kv, kv, f, f))
    wqkv, w13 = torch.cat([wq, wk, wv]), torch.cat([w1, w3])

    def separate():
        F.linear(x, wq), F.linear(x, wk), F.linear(x, wv)
        return F.silu(F.linear(x, w1)) * F.linear(x, w3)

    def fused():
        F.linear(x, wqkv).split([d, kv, kv], -1)
        gate, up = F.linear(x, w13).chunk(2, -1)
        return F.silu(gate) * up

    best = {"separate": float("inf"), "fused": float("inf")}
    with torch.no_grad():
        for _ in range(5):
            for label, fn in (("separate", separate), ("fused", fused)):
                t = time.perf_counter()
                for _ in range(reps):
                    fn()
                best[label] = min(best[label], (time.perf_counter() - t) / reps * 1e6)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="100m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    ap.add_argument("--new", type=int, default=64, help="new tokens per row")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="aromni: static cache + torch.compile'd decode step")
    ap.add_argument("--tts-tokens", type=int, default=120, help="speech codes for the TTS RTF run (40/s)")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--no-tts", action="store_true")
    ap.add_argument("--lm-step", action="store_true", help="only: ms per decode step of the bundled model")
    ap.add_argument("--fusion", action="store_true", help="only: fused vs separate q/k/v and gate/up projections")
    a = ap.parse_args()
    if a.fusion:
        return fusion()
    from aromni.core.device import DTYPES

    if a.lm_step:
        print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")
        for name, (ms, pre) in lm_step([int(x) for x in a.batches.split(",")], a.new, a.reps, a.compile,
                                       DTYPES[a.dtype], a.prompt).items():
            print(f"{name:<20}{ms:8.3f} ms/step{pre:10.1f} ms prefill")
        return

    from aromni.core.model import build_model, get_config
    from aromni.core.vocab import arom_layout, compact_layout

    torch.manual_seed(0)
    dev = torch.device(a.device)
    dtype = DTYPES[a.dtype]
    cfg = get_config(a.config, max_seq_len=max(1024, a.prompt + a.new + 8))
    # the AR-Omni layout for 65536-id models, else a compact one of the config's size
    layout = arom_layout() if cfg.vocab_size == 65536 else \
        compact_layout(text=cfg.vocab_size - 16 - 2048, image=1024, audio=1024, image_tokens=256)
    model = build_model(cfg, device=dev, dtype=dtype, seed=0).eval()
    print(f"config {a.config}: {cfg.num_params() / 1e6:.0f}M params, vocab {cfg.vocab_size}, {dev}, {a.dtype}, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    hf = None
    if not a.no_hf:
        import transformers
        hf = hf_model(model, layout)
        print(f"transformers {transformers.__version__}: ChameleonForConditionalGeneration.generate (greedy)")
    g = torch.Generator().manual_seed(1)
    text = torch.arange(layout.text_start, layout.text_end)

    print(f"\nprompt {a.prompt} tokens, {a.new} new tokens per row, best of {a.reps}")
    print(f"{'engine':<14}{'batch':>6}{'prefill tok/s':>15}{'decode tok/s':>14}{'first token ms':>16}  same tokens")
    for B in [int(x) for x in a.batches.split(",")]:
        prompts = [[0] + text[torch.randint(len(text), (a.prompt - 1,), generator=g)].tolist() for _ in range(B)]
        run_ours(model, layout, prompts, 4, a.compile)  # warm-up (and compile)
        ours = best(lambda p=prompts: run_ours(model, layout, p, a.new, a.compile), a.reps)
        ro = rates(ours, B, a.prompt, a.new)
        rh, same = None, ""
        if hf is not None:
            run_hf(hf, prompts, 4, dev)
            theirs = best(lambda p=prompts: run_hf(hf, p, a.new, dev), a.reps)
            rh = rates(theirs, B, a.prompt, a.new)
            same = "yes" if theirs["tokens"] == ours["tokens"] else "NO"
        print(f"{'aromni':<14}{B:>6}{ro['prefill']:>15.0f}{ro['decode']:>14.1f}{ro['first_ms']:>16.1f}  {same}")
        if rh:
            print(f"{'transformers':<14}{B:>6}{rh['prefill']:>15.0f}{rh['decode']:>14.1f}{rh['first_ms']:>16.1f}")
            print(f"{'  speed-up':<14}{'':>6}{ro['prefill'] / rh['prefill']:>14.2f}x"
                  f"{ro['decode'] / rh['decode']:>13.2f}x{rh['first_ms'] / ro['first_ms']:>15.2f}x")
    if not a.no_tts:
        st = tts_rtf(model, layout, dev, a.tts_tokens)
        print(f"\nTTS ({a.config} + WavTokenizer-24k-40 decoder, streamed): {st['audio_s']:.2f}s audio, "
              f"first audio {st['first_audio_s'] * 1000:.0f} ms, {st['tokens_per_s']:.1f} tokens/s, "
              f"RTF {st['rtf']:.3f}")


if __name__ == "__main__":
    main()
