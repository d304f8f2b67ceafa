"""One table of serving numbers for a 7B-shaped model with random weights, per weight format (bf16, int8, int4).

Measured per format, through aromni's own decoding engine (``core.generate`` / ``core.tasks``):

- ``weights GB``: the model's parameters and quantised buffers;
- ``decode tok/s b1`` / ``b8``: new text tokens per second of decoding (prefill excluded) at batch 1 and 8;
- ``first token ms``: prompt in -> first new token out, batch 1 (prefill of a ``--prompt-len`` prompt);
- ``TTS RTF``: ``tasks.tts`` with streaming audio callbacks (decode time / audio time, the codec decoding
  included), ``--speech-s`` seconds of speech per sentence; ``first audio ms``: text in -> first audio out;
- ``T2I s``: ``tasks.t2i``, one image of the tokenizer's codes (1024 for the Chameleon VQGAN) with classifier-free
  guidance (3 streams decoded together), pixels included;
- ``peak GB``: peak CUDA memory of the format's runs (process peak RSS on CPU).

Random weights decode random tokens, so only speed and memory are meaningful; lengths are pinned by caps.
``--tiny`` runs the same code on the test-size model and tokenizers (CPU, seconds): it keeps the suite tested.

    python benchmarks/gpu_suite.py                     # 7B shapes on CUDA: bf16, int8, int4
    python benchmarks/gpu_suite.py --tiny              # test-size, on CPU: fp32, int8
    python benchmarks/gpu_suite.py --formats bf16 int4 --decode-tokens 64
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TTS_TEXT = "The quick brown fox jumps over the lazy dog near the river bank."
T2I_TEXT = "a large red circle on the left"
COLUMNS = ("format", "weights GB", "decode tok/s b1", "decode tok/s b8", "first token ms", "TTS RTF",
           "first audio ms", "T2I s", "peak GB")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_gb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def parts(tiny: bool, dev: torch.device, config: str = "7b"):
    """(model config, vocab layout, text, image and speech tokenizers): the test-size ones, or the AR-Omni
    layout and codecs with model config ``config``."""
    from aromni.core.image_tokenizer import build_image_tokenizer
    from aromni.core.model import get_config
    from aromni.core.speech_tokenizer import build_speech_tokenizer
    from aromni.core.text_tokenizer import ByteTokenizer
    from aromni.core.vocab import arom_layout

    if tiny:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from _tiny import tiny_parts

        layout, cfg, text, image, speech = tiny_parts(0)
        return cfg, layout, text, image, speech
    layout = arom_layout()
    cfg = get_config(config, vocab_size=layout.vocab_size)
    image = build_image_tokenizer("chameleon", device=dev)
    speech = build_speech_tokenizer("wavtokenizer-24k-40", device=dev)
    return cfg, layout, ByteTokenizer(offset=layout.text_start), image, speech


def random_model(cfg, dev: torch.device, dtype: torch.dtype, seed: int = 0):
    """A Transformer of ``cfg`` whose tensors are made directly on ``dev`` in ``dtype`` (no full-size fp32 copy
    anywhere): N(0, 0.02) matrices, norm weights 1, biases 0."""
    import torch.nn as nn

    from aromni.core.model import Transformer

    with torch.device("meta"):
        m = Transformer(cfg)
    g = torch.Generator(device=dev).manual_seed(seed)
    for mod in m.modules():
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            t = torch.empty(p.shape, dtype=dtype, device=dev)
            if p.dim() == 2:
                t.normal_(0.0, 0.02, generator=g)
            else:
                t.fill_(0.0 if name == "bias" else 1.0)
            mod._parameters[name] = nn.Parameter(t, requires_grad=False)
        if any(b is not None for b in mod._buffers.values()):
            raise RuntimeError(f"{type(mod).__name__} has buffers this builder does not know how to fill")
    m.reset_rope()
    return m.eval()


def decode_run(omni, batch: int, prompt_len: int, new: int):
    """Generation of ``new`` text tokens for ``batch`` random-text prompts of ``prompt_len`` tokens."""
    from aromni.core.decoding import options_for
    from aromni.core.generate import generate

    v = omni.vocab
    lo = v.text_start
    g = torch.Generator().manual_seed(batch)
    prompts = [[v.bos] + (lo + torch.randint(0, 200, (prompt_len - 1,), generator=g)).tolist()
               for _ in range(batch)]
    opts = options_for("chat", max_new_tokens=new, greedy=False, batch_size=batch)
    return generate(omni.model, v, prompts, opts, seeds=list(range(batch)))


def measure(omni, fmt: str, a, dev: torch.device) -> dict:
    from aromni.core import tasks
    from aromni.core.decoding import options_for
    from aromni.core.quant import weight_bytes

    row: dict = {"format": fmt, "weights GB": weight_bytes(omni.model) / 2**30}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def cell(keys, fn):
        try:
            with torch.inference_mode():
                out = fn()
            row.update(dict(zip(keys, out)))
        except Exception as e:  # noqa: BLE001 - one failing measurement leaves the others in the table
            for k in keys:
                row[k] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:60] if str(e) else ''}"
            if a.debug:
                traceback.print_exc()

    decode_run(omni, 1, 8, 4)  # warm-up (kernels, allocator)
    sync(dev)

    def b1():
        g = decode_run(omni, 1, a.prompt_len, a.decode_tokens)
        return g.tokens_per_s, g.first_token_s * 1000

    def b8():
        g = decode_run(omni, 8, a.prompt_len, a.decode_tokens)
        return (g.tokens_per_s,)

    def tts():
        codes_per_s = omni.speech.sample_rate / omni.speech.hop
        opts = options_for("tts", max_speech_tokens=int(a.speech_s * codes_per_s), chunk_words=0)
        r = tasks.tts(omni, TTS_TEXT, opts, on_audio=lambda chunk: None, seed=0)
        fa = r.stats.get("first_audio_s")
        return r.stats.get("rtf"), None if fa is None else fa * 1000

    def t2i():
        t0 = time.perf_counter()
        tasks.t2i(omni, [T2I_TEXT], opts=options_for("t2i", cfg=True), seed=0)
        sync(dev)
        return (time.perf_counter() - t0,)

    cell(("decode tok/s b1", "first token ms"), b1)
    cell(("decode tok/s b8",), b8)
    cell(("TTS RTF", "first audio ms"), tts)
    cell(("T2I s",), t2i)
    row["peak GB"] = peak_gb(dev)
    return row


def fmt_cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if v < 1000 else f"{v:.0f}"
    return "-" if v is None else str(v)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="test-size model and tokenizers (CPU unless --device)")
    ap.add_argument("--config", default="7b", help="model config without --tiny (core.model.CONFIGS; default 7b)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--formats", nargs="+", default=None, choices=["bf16", "fp32", "int8", "int4"],
                    help="default: bf16 int8 int4 on CUDA, fp32 int8 on CPU")
    ap.add_argument("--prompt-len", type=int, default=None, help="prompt tokens for decode (default 512; 16 tiny)")
    ap.add_argument("--decode-tokens", type=int, default=None, help="new tokens per decode run (128; 16 tiny)")
    ap.add_argument("--speech-s", type=float, default=None, help="seconds of speech for TTS (5; 1 tiny)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: aromni's policy)")
    ap.add_argument("--debug", action="store_true", help="print tracebacks of failed measurements")
    a = ap.parse_args(argv)
    from aromni.core.threads import apply_threads

    apply_threads(a.threads)
    dev = torch.device(a.device or ("cpu" if a.tiny else "cuda"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_suite: CUDA is not available (use --tiny to run the suite on CPU)")
    a.prompt_len = a.prompt_len or (16 if a.tiny else 512)
    a.decode_tokens = a.decode_tokens or (16 if a.tiny else 128)
    a.speech_s = a.speech_s or (1.0 if a.tiny else 5.0)
    formats = a.formats or (["bf16", "int8", "int4"] if dev.type == "cuda" else ["fp32", "int8"])

    from aromni.core.bundle import Omni
    from aromni.core.quant import quantize

    base = torch.bfloat16 if dev.type == "cuda" else torch.float32
    cfg, layout, text, image, speech = parts(a.tiny, dev, a.config)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"# aromni GPU suite: {'tiny' if a.tiny else a.config} model ({cfg.num_params() / 1e9:.2f} B params, "
          f"random weights) on {name}, torch {torch.__version__}; prompt {a.prompt_len} tokens, "
          f"{a.decode_tokens} new tokens per decode run, {a.speech_s:g} s of speech", flush=True)
    rows = []
    for fmt in formats:
        t0 = time.perf_counter()
        try:
            model = random_model(cfg, dev, torch.float32 if fmt == "fp32" else base)
            quantize(model, None if fmt in ("bf16", "fp32") else fmt, min_size=0 if a.tiny else None)
        except Exception as e:  # noqa: BLE001 - e.g. int4 off CUDA: a row that says why
            rows.append({"format": fmt, "weights GB": f"error: {e}"})
            print(f"# {fmt}: {e}", flush=True)
            continue
        omni = Omni(model=model, vocab=layout, family="aromni", text=text, image=image, speech=speech,
                    source="random")
        rows.append(measure(omni, fmt, a, dev))
        print(f"# {fmt}: {time.perf_counter() - t0:.0f} s", flush=True)
        del omni, model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in rows:
        print("| " + " | ".join(fmt_cell(r.get(c)) for c in COLUMNS) + " |", flush=True)
    return rows


if __name__ == "__main__":
    main()
