"""core/quant.py: int8 and int4 linear layers, ``load(quant=...)``, ``--quant`` on the CLI, and the bundled model's
greedy output in int8 against fp32."""
from __future__ import annotations

import copy
import pytest
import torch
import torch.nn as nn

from aromni.core.errors import AromniError
from aromni.core.quant import (Int4Linear, Int8Linear, check_quant, int4_weight, int8_weight, linear_rows, quantize,
                               weight_bytes)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_int8_weight_round_trip_is_within_half_a_step():
    w = torch.randn(48, 96)
    q, s = int8_weight(w)
    assert q.dtype == torch.int8 and s.shape == (48,)
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-6).all()


def test_int8_linear_close_to_fp32_and_rows_match():
    torch.manual_seed(0)
    lin = nn.Linear(256, 384, bias=False)
    x = torch.randn(3, 5, 256)
    q = Int8Linear(lin.weight)
    assert q.kernel == "int_mm"
    y, ref = q(x), lin(x)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert _rel(y, ref) < 0.03
    assert torch.equal(q.forward_rows(x, 100, 200), y[..., 100:200])
    assert torch.equal(linear_rows(lin, x, 100, 200), ref[..., 100:200])


def test_int4_packing_matches_its_dequantised_weight():
    # the CPU int4 kernel checks the grouped scales/offsets and packing that CUDA uses
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    q, scale, zero = int4_weight(w, 128)
    deq = ((q.float().view(64, 2, 128) - 8) * scale[..., None] + zero[..., None]).view(64, 256)
    assert _rel(deq, w) < 0.12
    m = Int4Linear(w, 128, cpu_ok=True)
    x = torch.randn(4, 256)
    assert _rel(m(x), x @ deq.t()) < 0.01
    assert torch.equal(m.forward_rows(x, 8, 24), m(x)[:, 8:24])


def test_quantize_replaces_big_linears_and_shrinks_the_model():
    from aromni.core.model import build_model, get_config

    m = build_model(get_config("tiny"))
    before = weight_bytes(m)
    ids = torch.randint(0, 256, (1, 12))
    with torch.inference_mode():
        ref = m(ids)
        q = quantize(copy.deepcopy(m), "int8", min_size=0)
        out = q(ids)
    kinds = {type(mod).__name__ for mod in q.modules()}
    assert "Int8Linear" in kinds and "Linear" not in kinds
    assert weight_bytes(q) < 0.45 * before
    assert _rel(out, ref) < 0.05
    # the default size floor on CPU leaves the tiny model's small layers alone
    assert not any(isinstance(mod, Int8Linear) for mod in quantize(copy.deepcopy(m), "int8").modules())


def test_quant_names_and_int4_off_cuda_are_refused():
    assert check_quant("none") is None and check_quant(None) is None and check_quant("int8") == "int8"
    with pytest.raises(AromniError, match="unknown quant"):
        check_quant("int3")
    from aromni.core.model import build_model, get_config

    with pytest.raises(AromniError, match="CUDA"):
        quantize(build_model(get_config("tiny")), "int4")


def test_cli_quant_option(tiny_bundle, tmp_path):
    from test_cli import aromni

    out = tmp_path / "a.wav"
    r = aromni("tts", "hi", "-m", tiny_bundle, "--quant", "int8", "--max-new-tokens", "8", "-o", str(out),
               "--seed", "0")
    assert r.returncode == 0, r.stderr.decode()
    assert ", int8)" in r.stderr.decode() and out.exists()
    r = aromni("tts", "hi", "-m", tiny_bundle, "--quant", "int4", "-o", str(tmp_path / "b.wav"))
    assert r.returncode == 2 and "int4 needs a CUDA device" in r.stderr.decode()
    assert not (tmp_path / "b.wav").exists()
    r = aromni("caption", "x.png", "--quant", "int5")
    assert r.returncode == 2 and "'int5' is not one of 'none', 'int8', 'int4'" in r.stderr.decode()
    from aromni.commands._common import QUANT_CHOICES
    from aromni.core.quant import QUANTS

    assert QUANT_CHOICES == QUANTS


def _greedy_runs(omni, prompts: dict) -> list[tuple[str, list[int], list[int]]]:
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


def test_bundled_model_int8_greedy_output_against_fp32(tmp_path):
    """Greedy TTS, T2I and caption of the bundled model on held-out prompts of the synthetic corpus, int8
    (load(quant="int8")) against fp32 (docs/performance.md has the measurement on 48 prompts a task). A greedy
    output that departs once continues differently: on the prompts here TTS reproduces 84 % of fp32's codes
    free-running and makes the same choice at 99 % of its steps, T2I 78 % and 99 %, captions every token."""
    import json

    from PIL import Image

    from aromni.core.api import load
    from aromni.core.corpus.build import build_corpus

    build_corpus(str(tmp_path), seed=0, preset="ci", speech=False, heldout_scenes=8, max_sentences=40)
    rows = [json.loads(line) for line in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    prompts = {"tts": [r["text"] for r in rows if r["task"] == "text"][:3],
               "t2i": [r["text"] for r in rows if r["task"] == "t2i"][:8],
               "caption": [Image.open(tmp_path / r["image"]).convert("RGB") for r in rows if r["task"] == "caption"]}
    fp = load(None, device="cpu", dtype="fp32")
    q8 = load(None, device="cpu", dtype="fp32", quant="int8")
    assert any(isinstance(m, Int8Linear) for m in q8.model.modules())
    ref, got = _greedy_runs(fp, prompts), _greedy_runs(q8, prompts)
    acc: dict[str, list[int]] = {}
    with torch.inference_mode():
        for (task, p, t), (_, _, t8) in zip(ref, got):
            ids = torch.tensor([p + t])
            a = fp.model(ids)[0, len(p) - 1:-1].argmax(-1)
            b = q8.model(ids)[0, len(p) - 1:-1].argmax(-1)
            r = acc.setdefault(task, [0, 0, 0])
            r[0] += sum(x == y for x, y in zip(t, t8))
            r[1] += int((a == b).sum())
            r[2] += len(t)
    free = {k: f / n for k, (f, _, n) in acc.items()}
    forced = {k: s / n for k, (_, s, n) in acc.items()}
    assert acc["t2i"][2] >= 8 * 64 and acc["tts"][2] > 50 and acc["caption"][2] > 30, acc
    assert free["tts"] >= 0.75 and forced["tts"] >= 0.98 and free["caption"] >= 0.95, (free, forced)
    assert forced["t2i"] >= 0.95, forced
    assert free["t2i"] >= 0.5, free
