"""Per-task evaluation loops: load data and model, run the task in batches (tqdm on stderr), score, and
return a report dict (see report.py).

Metrics per task:
- asr: corpus WER (normalised text, see normalize.py).
- tts: WER of the judge's transcript of each synthesised clip against the input text; first-audio latency
  and RTF (the task's own stats: synthesis + codec decode time / output audio duration).
- caption: CIDEr-D over all images; exact-attribute accuracy when items carry synthetic-scene ``attrs``.
- t2i: attribute accuracy of the scene analyser on each image (``attrs``, else parsed from the prompt);
  CLIPScore with a local open_clip checkpoint.
- s2i: attribute accuracy on the image drawn from the spoken caption; WER of the intermediate transcript.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..checks import check_numbers
from ..errors import AromniError, InputError, NotAvailableError, OptionError
from ..quant import param_count
from .data import Dataset, Item, load_dataset
from .normalize import NORMALIZER
from .report import Report
from .wer import corpus_wer, word_errors


@dataclass
class EvalConfig:
    task: str
    data: str
    model: str | None = None  # None: the bundled default
    split: str = "heldout"
    limit: int | None = None
    batch_size: int = 8
    seed: int | None = 0
    device: str = "auto"
    dtype: str = "auto"
    quant: str = "none"  # none | int8 | int4 (core.quant)
    decode: dict = field(default_factory=dict)  # DecodeOptions overrides (None values ignored)
    compat: bool = False
    judge: str = "whisper"  # tts: "self", "whisper" or "whisper:PATH"
    clip_checkpoint: str | None = None
    clip_arch: str = "ViT-B-32"
    save_dir: str | None = None  # keep generated wavs / images here
    quiet: bool = False


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", file=sys.stderr, disable=quiet, dynamic_ncols=True)


def _stat(stats, name: str):
    v = stats.get(name) if isinstance(stats, dict) else getattr(stats, name, None)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _summary(values: list, prefix: str) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {}
    return {f"{prefix}_mean": statistics.fmean(vals), f"{prefix}_median": statistics.median(vals),
            f"{prefix}_max": max(vals)}


def _by_group(rows: list[dict], score) -> dict:
    """``{group: score(rows of that group)}`` when the items name more than one group (corpus voices)."""
    groups = sorted({r["group"] for r in rows if r.get("group")})
    if len(groups) < 2:
        return {}
    return {"by_group": {g: score([r for r in rows if r.get("group") == g]) for g in groups}}


SCP_KEYS = ("shape", "colour", "position")  # the T2I target's criterion (docs/evaluation.md): no size


def _attr_metrics(rows: list[dict]) -> dict:
    """``attr_accuracy`` and ``attr_n`` over the rows that carry an ``attrs_ok`` verdict ({} when none do), and
    ``scp_accuracy`` (shape, colour and position right, size not judged) over rows with an ``scp_ok``."""
    checked = [r["attrs_ok"] for r in rows if r.get("attrs_ok") is not None]
    out = {"attr_accuracy": sum(checked) / len(checked), "attr_n": len(checked)} if checked else {}
    scp = [r["scp_ok"] for r in rows if r.get("scp_ok") is not None]
    if scp:
        out["scp_accuracy"] = sum(scp) / len(scp)
    return out


def _heard_attrs(rows: list[dict]) -> dict:
    """TTS of scene captions (rows with ``attrs``): per judge, the share of clips in which it heard each attribute
    as the caption says it (``{"caption_attrs": {"n": N, judge: {"shape": .., "position": ..}}}``, {} when no
    row is a caption). It says which words a TTS model gets wrong, e.g. an unseen scene's position."""
    from ..corpus.scenes import OBJECT_KEYS, attrs_match, parse_caption

    caps = [r for r in rows if r.get("attrs")]
    if not caps:
        return {}
    out: dict = {"n": len(caps)}
    for judge in caps[0]["hyps"]:
        heard = [parse_caption(r["hyps"][judge]) for r in caps]
        out[judge] = {k: sum(attrs_match(h, r["attrs"], (k,)) for h, r in zip(heard, caps)) / len(caps)
                      for k in OBJECT_KEYS}
    return {"caption_attrs": out}


def _asr_score(rows: list[dict]) -> dict:
    return {**corpus_wer([r["ref"] for r in rows], [r["hyp"] for r in rows]).to_dict(), "n": len(rows),
            **_confidence(rows)}


def _confidence(rows: list[dict]) -> dict:
    """Mean average token log-probability of the rows' answers, the share flagged as low confidence
    (core/confidence.py) and, for speech, the share heard as no speech ({} when the rows carry none)."""
    lps = [r["avg_logprob"] for r in rows if r.get("avg_logprob") is not None]
    out = {"avg_logprob_mean": statistics.fmean(lps)} if lps else {}
    for key, rate in (("low_confidence", "low_confidence_rate"), ("no_speech", "no_speech_rate")):
        flags = [r[key] for r in rows if r.get(key) is not None]
        if flags:
            out[rate] = sum(flags) / len(flags)
    return out


def _answer_fields(answer) -> dict:
    """A row's confidence fields from a ``confidence.Answer``."""
    return {k: v for k, v in answer.to_dict().items() if k != "text"}


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(f"not a readable image ({e})", path) from None


def _attr_check(pred: dict, ref: dict, texts: Sequence[str | None] = (), keys: tuple[str, ...] | None = None) -> bool:
    """Exact match of every object's attributes (``keys``, default all); the background counts only when one of
    ``texts`` (the prompt, or the reference captions) states it, since template captions do not."""
    from ..corpus.scenes import OBJECT_KEYS, attrs_match, parse_caption

    said = any("background" in parse_caption(t or "") for t in texts)
    keys = tuple(keys or OBJECT_KEYS)
    return bool(attrs_match(pred, ref, keys + (("background",) if said and "background" in ref else ())))


def _scene_verdicts(seen: dict, ref: dict | None, text: str | None) -> dict:
    """``attrs_ok`` (every attribute) and ``scp_ok`` (shape, colour, position) of an analysed image."""
    if not ref:
        return {"attrs_ok": None, "scp_ok": None}
    return {"attrs_ok": _attr_check(seen, ref, [text]), "scp_ok": _attr_check(seen, ref, [text], SCP_KEYS)}


def _save(cfg: EvalConfig, name: str, obj, sample_rate: int | None = None) -> str | None:
    if not cfg.save_dir:
        return None
    from ..outputs import atomic_file, confined_path, make_dir

    path = confined_path(make_dir(cfg.save_dir), name)
    if sample_rate is not None:
        from ..audio_io import write_wav
        write_wav(path, obj, sample_rate)
    else:
        with atomic_file(path) as f:
            obj.save(f, format="PNG")
    return path


# --- tasks -------------------------------------------------------------------------------------
def eval_asr(omni, ds: Dataset, cfg: EvalConfig, opts) -> tuple[dict, list, dict]:
    from .. import tasks
    from ..audio_io import load_audio

    sr = omni.speech.sample_rate
    rows = []
    with _progress(len(ds.items), "eval asr", cfg.quiet) as bar:
        for batch in _batches(ds.items, cfg.batch_size):
            wavs = [load_audio(it.audio, sr, resampler=omni.speech.resampler) for it in batch]
            answers = tasks.asr_answers(omni, wavs, opts=opts, seed=cfg.seed)
            for it, wav, a in zip(batch, wavs, answers):
                rows.append({"id": it.id, "ref": it.text, "hyp": a.text, "audio_s": len(wav) / sr, "group": it.group,
                             **word_errors(it.text, a.text).to_dict(), **_answer_fields(a)})
            bar.update(len(batch))
    return {**_asr_score(rows), **_by_group(rows, _asr_score)}, rows, {"normalizer": NORMALIZER}


def eval_tts(omni, ds: Dataset, cfg: EvalConfig, opts) -> tuple[dict, list, dict]:
    """``cfg.judge`` may name several judges, comma-separated (``whisper,self``): the first gives ``wer``, each
    one its own entry in ``metrics["judges"]``; the speech is synthesised once."""
    from .. import tasks
    from .judge import make_judge

    judges = [make_judge(j.strip(), omni=omni, device=str(omni.device), seed=cfg.seed)
              for j in cfg.judge.split(",") if j.strip()]
    if not judges:
        raise OptionError("judge", "names no judge")
    sr = omni.speech.sample_rate
    rows, wavs = [], []
    with _progress(len(ds.items), "eval tts", cfg.quiet) as bar:
        for i, it in enumerate(ds.items):
            assert it.text is not None  # tts items need a text (data.NEEDS)
            res = tasks.tts(omni, it.text, opts=opts, seed=cfg.seed)
            wav = np.asarray(res.wav, dtype=np.float32)
            wavs.append(wav)
            rows.append({"id": it.id, "ref": it.text, "audio_s": len(wav) / sr, "codes": int(len(res.codes)),
                         "first_audio_s": _stat(res.stats, "first_audio_s"), "rtf": _stat(res.stats, "rtf"),
                         "tokens_per_s": _stat(res.stats, "tokens_per_s"),
                         "wav": _save(cfg, f"{i:05d}.wav", wav, sr), **({"attrs": it.attrs} if it.attrs else {})})
            bar.update(1)
    by_judge = {}
    for judge in judges:
        hyps: list[str] = []
        with _progress(len(rows), f"judge ({judge.name})", cfg.quiet) as bar:
            for start in range(0, len(rows), cfg.batch_size):
                hyps += judge.transcribe(wavs[start:start + cfg.batch_size], sr)
                bar.update(len(wavs[start:start + cfg.batch_size]))
        for r, hyp in zip(rows, hyps):
            r.setdefault("hyps", {})[judge.name] = hyp
        by_judge[judge.name] = {**corpus_wer([r["ref"] for r in rows], hyps).to_dict(), "n": len(rows)}
    first = judges[0].name
    for r in rows:
        r["hyp"] = r["hyps"][first]
        r.update(word_errors(r["ref"], r["hyp"]).to_dict())
    audio = sum(r["audio_s"] for r in rows)
    metrics = {**by_judge[first], "audio_s_total": audio,
               **_summary([r["first_audio_s"] for r in rows], "first_audio_s"),
               **_summary([r["rtf"] for r in rows], "rtf"),
               **_summary([r["tokens_per_s"] for r in rows], "tokens_per_s"), **_heard_attrs(rows)}
    info = {k if k == "judge" else f"judge_{k}": v for k, v in judges[0].info().items()}
    if len(judges) > 1:
        metrics["judges"] = by_judge
        info["judge"] = ",".join(j.name for j in judges)
        info["judges_info"] = {j.name: j.info() for j in judges}
    return metrics, rows, {"normalizer": NORMALIZER, **info}


def eval_caption(omni, ds: Dataset, cfg: EvalConfig, opts) -> tuple[dict, list, dict]:
    from .. import tasks
    from ..corpus.scenes import parse_caption
    from .cider import cider_d

    rows = []
    with _progress(len(ds.items), "eval caption", cfg.quiet) as bar:
        for batch in _batches(ds.items, cfg.batch_size):
            answers = tasks.caption_answers(omni, [_open_image(it.image) for it in batch], opts=opts, seed=cfg.seed)
            for it, a in zip(batch, answers):
                row = {"id": it.id, "image": it.image, "refs": it.refs, "hyp": a.text, "group": it.group,
                       **_answer_fields(a)}
                if it.attrs:
                    row["attrs_ok"] = _attr_check(parse_caption(a.text), it.attrs, it.refs)
                rows.append(row)
            bar.update(len(batch))
    score, per = cider_d([r["refs"] for r in rows], [r["hyp"] for r in rows])
    for r, s in zip(rows, per):
        r["cider_d"] = s
    metrics = {"cider_d": score, "n": len(rows), **_attr_metrics(rows), **_confidence(rows)}
    metrics.update(_by_group(rows, lambda rs: {"n": len(rs), **_attr_metrics(rs), **_confidence(rs)}))
    return metrics, rows, {"cider": "CIDEr-D (n=4, sigma=6, df from this set's references)"}


def _scene_ref(it: Item) -> dict | None:
    from ..corpus.scenes import parse_caption

    if it.attrs:
        return it.attrs
    parsed = parse_caption(it.text or "")
    return parsed if parsed.get("objects") else None


def eval_t2i(omni, ds: Dataset, cfg: EvalConfig, opts) -> tuple[dict, list, dict]:
    from .. import tasks
    from ..corpus.scenes import analyse

    scorer = None
    if cfg.clip_checkpoint:
        from .clipscore import ClipScorer
        scorer = ClipScorer(cfg.clip_checkpoint, cfg.clip_arch, device=omni.device)
    elif not any(_scene_ref(it) for it in ds.items):
        from .clipscore import ClipScorer
        ClipScorer(None)  # nothing else to measure: raises the "needs a checkpoint" message
    elif not cfg.quiet:
        print("aromni: CLIPScore not computed (no CLIP checkpoint); scoring scene attributes only",
              file=sys.stderr)
    rows = []
    n = 0
    with _progress(len(ds.items), "eval t2i", cfg.quiet) as bar:
        for batch in _batches(ds.items, cfg.batch_size):
            images = tasks.t2i(omni, [it.text for it in batch], n=1, opts=opts, seed=cfg.seed)
            clip = scorer.score(images, [it.text for it in batch]) if scorer else [None] * len(batch)
            for it, img, cs in zip(batch, images, clip):
                ref, seen = _scene_ref(it), analyse(img)
                rows.append({"id": it.id, "text": it.text, "clipscore": cs, **_scene_verdicts(seen, ref, it.text),
                             "analysed": seen, "group": it.group, "image": _save(cfg, f"{n:05d}.png", img)})
                n += 1
            bar.update(len(batch))
    metrics: dict = {"n": len(rows)}
    if scorer:
        metrics["clipscore"] = statistics.fmean(r["clipscore"] for r in rows)
    metrics.update(_attr_metrics(rows))
    metrics.update(_by_group(rows, lambda rs: {"n": len(rs), **_attr_metrics(rs)}))
    return metrics, rows, (scorer.info() if scorer else {})


def eval_s2i(omni, ds: Dataset, cfg: EvalConfig, opts) -> tuple[dict, list, dict]:
    from .. import tasks
    from ..audio_io import load_audio
    from ..corpus.scenes import analyse

    sr = omni.speech.sample_rate
    rows: list[dict] = []
    with _progress(len(ds.items), "eval s2i", cfg.quiet) as bar:
        for batch in _batches(ds.items, cfg.batch_size):
            outs = tasks.s2i(omni, [load_audio(it.audio, sr, resampler=omni.speech.resampler) for it in batch],
                             opts=opts, seed=cfg.seed)
            for it, (text, img) in zip(batch, outs):
                ref, seen = _scene_ref(it), analyse(img)
                row = {"id": it.id, "ref": it.text, "hyp": text, "group": it.group,
                       **_scene_verdicts(seen, ref, it.text), "analysed": seen,
                       "image": _save(cfg, f"{len(rows):05d}.png", img)}
                if it.text:
                    row.update(word_errors(it.text, text).to_dict())
                rows.append(row)
            bar.update(len(batch))
    metrics = {"n": len(rows), **_attr_metrics(rows)}
    with_ref = [r for r in rows if r["ref"]]
    if with_ref:
        stats = corpus_wer([r["ref"] for r in with_ref], [r["hyp"] for r in with_ref])
        metrics.update(transcript_wer=stats.wer, transcript_errors=stats.errors, transcript_ref_words=stats.ref_words)
    if "attr_n" not in metrics and not with_ref:
        raise AromniError("s2i items need scene attrs (or a scene caption as text) to score the images")
    metrics.update(_by_group(rows, lambda rs: {"n": len(rs), **_attr_metrics(rs)}))
    return metrics, rows, {"normalizer": NORMALIZER}


EVALUATORS = {"asr": eval_asr, "tts": eval_tts, "caption": eval_caption, "t2i": eval_t2i, "s2i": eval_s2i}
NEEDS = {"asr": ("text", "speech"), "tts": ("text", "speech"), "caption": ("text", "image"),
         "t2i": ("text", "image"), "s2i": ("text", "image", "speech")}


def evaluate(cfg: EvalConfig, omni=None) -> dict:
    """Run one evaluation; ``omni`` (already loaded) skips loading ``cfg.model``. Returns the report dict."""
    from ..decoding import options_for, with_model_defaults
    from ..device import seed_everything

    if cfg.task not in EVALUATORS:
        raise AromniError(f"unknown task {cfg.task!r} ({', '.join(EVALUATORS)})")
    check_numbers(batch_size=cfg.batch_size, limit=cfg.limit, seed=cfg.seed)
    ds = load_dataset(cfg.data, cfg.task, cfg.split, cfg.limit)
    # fail before loading a (possibly large) model
    if cfg.task == "t2i" and cfg.clip_checkpoint and not os.path.exists(cfg.clip_checkpoint):
        raise InputError("no such checkpoint file or directory", cfg.clip_checkpoint)
    if cfg.task == "tts" and "whisper" in cfg.judge.split(","):
        from .judge import whisper_unavailable
        reason = whisper_unavailable()
        if reason:
            raise NotAvailableError(f"judge whisper: {reason}; or judge with the model's own ASR (self)")
    opts = options_for(cfg.task, compat=cfg.compat, batch_size=cfg.batch_size, **cfg.decode)
    t0 = time.perf_counter()
    if omni is None:
        from ..api import load
        omni = load(cfg.model, device=cfg.device, dtype=cfg.dtype, quant=cfg.quant)
    load_s = time.perf_counter() - t0
    opts = with_model_defaults(opts, omni.decode)
    missing = [k for k in NEEDS[cfg.task] if getattr(omni, k) is None]
    if missing:
        raise AromniError(f"{cfg.task} evaluation needs the model's {' and '.join(missing)} tokenizer"
                          f"{'s' if len(missing) > 1 else ''}, which {cfg.model or 'the model'} lacks")
    seed_everything(cfg.seed)
    t1 = time.perf_counter()
    metrics, rows, settings = EVALUATORS[cfg.task](omni, ds, cfg, opts)
    eval_s = time.perf_counter() - t1
    model_cfg = omni.model.cfg
    report = Report(
        task=cfg.task, metrics=metrics,
        model={"path": omni.source or cfg.model or "default", "family": omni.family, "vocab": omni.vocab.name,
               "dim": model_cfg.dim, "n_layers": model_cfg.n_layers,
               "params": param_count(omni.model), "quant": cfg.quant},
        data=ds.info, seed=cfg.seed, device=str(omni.device),
        decoding=_jsonable({k: v for k, v in dataclasses.asdict(opts).items() if k != "explicit"}),
        dtype=str(next(omni.model.parameters()).dtype).replace("torch.", ""), batch_size=cfg.batch_size,
        settings=settings, timings={"load_s": load_s, "eval_s": eval_s, "items_per_s": len(rows) / eval_s
                                    if eval_s > 0 else None},
        items=rows)
    return report.to_dict()


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
