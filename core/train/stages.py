"""``aromni train`` dispatch: what is trained is chosen by the config's ``kind``.

- ``lm``: the transformer (core/train/loop.py).
- ``pretokenize``: manifests -> .npy shards under ``out_dir/<split>/`` (so training never reruns tokenizers).
- ``image_vq`` / ``codec`` / ``bpe``: a tokenizer, saved to ``out_dir`` with ``tokenizers.json`` (several
  tokenizers may share one directory; ``model.tokenizers: out_dir`` then picks them up).
"""
from __future__ import annotations

import os
import sys

import numpy as np

from ..errors import AromniError, CheckpointError, OptionError
from . import checkpoint as ckpt
from .config import TrainConfig, save_config
from .resolve import build_omni, load_tokenizers, write_tokenizer_spec


def _log(msg: str, quiet: bool) -> None:
    if not quiet and int(os.environ.get("RANK", "0")) == 0:
        print(msg, file=sys.stderr, flush=True)


def run(cfg: TrainConfig, *, resume: bool = False, quiet: bool = False, on_step=None) -> dict:
    """Run the stage ``cfg.kind``; the resolved config is echoed on stderr and saved as ``out_dir/config.yaml``."""
    if int(os.environ.get("RANK", "0")) == 0:
        os.makedirs(cfg.out_dir, exist_ok=True)
        save_config(cfg, os.path.join(cfg.out_dir, "config.yaml"))
    _log("# aromni train: resolved config\n" + cfg.to_yaml().rstrip(), quiet)
    if cfg.kind == "lm":
        return train_lm(cfg, resume=resume, quiet=quiet, on_step=on_step)
    if resume:
        raise OptionError("resume", f"applies to kind lm only (this config is kind {cfg.kind})")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise AromniError(f"kind {cfg.kind} runs in one process; start it without torchrun")
    if cfg.kind == "pretokenize":
        return pretokenize(cfg, quiet=quiet)
    return train_tokenizer(cfg, quiet=quiet, on_step=on_step)


def train_lm(cfg: TrainConfig, *, resume: bool = False, quiet: bool = False, on_step=None) -> dict:
    from . import dist as D
    from .loop import CKPT_DIR, Trainer

    root = os.path.join(cfg.out_dir, CKPT_DIR)
    path = cfg.checkpoint.resume_from
    if resume and not path:
        path = ckpt.latest_checkpoint(root)
        if path is None:
            raise CheckpointError(f"nothing to resume: no checkpoint under {root}")
    if not path and ckpt.list_checkpoints(root):
        raise OptionError("resume", f"{root} holds checkpoints of an earlier run: continue it with {{opt}}, or "
                          "choose another out_dir")
    source = None
    if cfg.train.strategy == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # no rank holds the whole model: built on the meta device, sharded, then each rank reads its rows
        from .resolve import fresh_config
        from .shard_load import open_lazy, random_state

        omni = build_omni(cfg, model=False)
        source = open_lazy(cfg.model.base) if cfg.model.base else random_state(
            fresh_config(cfg.model, load_tokenizers(cfg.model.tokenizers))[0], cfg.seed)
    else:
        omni = build_omni(cfg)
    try:
        res = Trainer(cfg, omni, quiet=quiet, on_step=on_step, source=source).fit(resume=path)
    finally:
        D.shutdown()
    return {"kind": "lm", "step": res.step, "out_dir": res.out_dir, "checkpoint": res.checkpoint,
            "bundle": res.bundle, "interrupted": res.interrupted, "paused": res.paused,
            "last": res.last}


# ----------------------------------------------------------------------------------------------
# Pre-tokenisation
# ----------------------------------------------------------------------------------------------
def pretokenize(cfg: TrainConfig, *, quiet: bool = False) -> dict:
    """Every record of the manifests in ``data.train`` and ``data.heldout`` -> shards in ``out_dir/<split>``."""
    from tqdm import tqdm

    from .data import ManifestSource, ShardWriter
    from .examples import ExampleBuilder

    omni = build_omni(cfg)
    builder = ExampleBuilder(omni.vocab, omni.text, omni.image, omni.speech, omni.prompts)
    specs = [(s, "train") for s in cfg.data.train] + [(s, "heldout") for s in cfg.data.heldout]
    writers: dict[str, ShardWriter] = {}
    skipped = 0
    hi = cfg.data.max_len
    for spec, default_split in specs:
        if isinstance(spec, str):
            spec = {"type": "manifest", "path": spec}
        if not (isinstance(spec, dict) and spec.get("type", "manifest") == "manifest"):
            raise AromniError(f"kind pretokenize reads manifest sources only (got {spec!r})")
        # a source's `split` keeps only those records; each record goes to its own split (or the list's)
        src = ManifestSource(spec["path"], builder=builder, split=spec.get("split"))
        total = None if quiet else sum(1 for _ in src.rows())
        bar = tqdm(src.rows(), total=total, desc=f"tokenize {os.path.basename(spec['path'])}", unit="rec",
                   file=sys.stderr, disable=quiet, dynamic_ncols=True)
        for d, where in bar:
            s = builder(d, src.base, where)
            if len(s.ids) < cfg.data.min_len or (hi is not None and len(s.ids) > hi):
                skipped += 1
                continue
            split = d.get("split") or default_split
            if split not in writers:
                writers[split] = ShardWriter(os.path.join(cfg.out_dir, split), cfg.data.shard_size,
                                             omni.vocab.fingerprint)
            writers[split].add(s)
    splits: dict[str, dict] = {}
    out = {"kind": "pretokenize", "out_dir": cfg.out_dir, "skipped": skipped, "splits": splits}
    for split, w in writers.items():
        idx = w.close()
        splits[split] = {"path": w.out_dir, "samples": idx["samples"], "tokens": idx["tokens"]}
        _log(f"{split}: {idx['samples']} samples, {idx['tokens']} tokens -> {w.out_dir}", quiet)
    if not writers:
        raise AromniError("pretokenize: no records were written (empty manifests or all filtered)")
    return out


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------
def _manifest_rows(cfg: TrainConfig):
    from .data import ManifestSource

    specs = list(cfg.data.train)
    if not specs:
        raise AromniError(f"config: kind {cfg.kind} needs a manifest in data.train")
    for spec in specs:
        if isinstance(spec, str):
            spec = {"type": "manifest", "path": spec}
        if spec.get("type", "manifest") != "manifest":
            raise AromniError(f"kind {cfg.kind} reads manifest sources only (got {spec!r})")
        src = ManifestSource(spec["path"], builder=lambda *a: None, split=spec.get("split", "train"))
        for d, where in src.rows():
            yield d, src.base, where


def _files_of(cfg: TrainConfig, key: str) -> list[tuple[str, str]]:
    """(path, where) of every ``key`` ("image" / "audio") in the manifests, chat turns included, up to
    ``tokenizer.max_items`` of them as ``tokenizer.pick`` says."""
    cap, first = cfg.tokenizer.max_items, cfg.tokenizer.pick == "first"
    out = []
    for d, base, where in _manifest_rows(cfg):
        items = [d] + [t for t in d.get("turns") or [] if isinstance(t, dict)]
        for it in items:
            if it.get(key):
                p = it[key]
                out.append((p if os.path.isabs(p) else os.path.join(base, p), where))
        if first and cap and len(out) >= cap:
            return out[:cap]
    if first:
        return out
    # A manifest written task by task puts some kinds of clip (a voice, a task's sentences) only at its end:
    # the first N would never see them.
    first_mention: dict[str, str] = {}  # path -> where, in order of first mention
    for p, w in out:
        first_mention.setdefault(p, w)
    distinct = list(first_mention.items())
    if cap and len(distinct) > cap:
        keep = np.sort(np.random.default_rng([cfg.seed, 17]).choice(len(distinct), cap, replace=False))
        distinct = [distinct[i] for i in keep]
    return distinct


def _texts_of(cfg: TrainConfig) -> list[str]:
    texts = []
    for d, _, _ in _manifest_rows(cfg):
        texts += [d["text"]] if isinstance(d.get("text"), str) else []
        texts += [t["text"] for t in d.get("turns") or [] if isinstance(t, dict) and isinstance(t.get("text"), str)]
        if cfg.tokenizer.max_items and len(texts) >= cfg.tokenizer.max_items:
            return texts[: cfg.tokenizer.max_items]
    return texts


def _progress(total: int, desc: str, quiet: bool, on_step):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, disable=quiet, dynamic_ncols=True)

    def cb(step: int, metrics: dict) -> None:
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))}, refresh=False)
        if on_step is not None:
            on_step({"step": step, **metrics})
    return bar, cb


def _init_tokenizer(cfg: TrainConfig, kind: str):
    t = cfg.tokenizer
    if t.init:
        toks = load_tokenizers({kind: t.init})
        return toks[kind]
    if kind == "image":
        from ..image_tokenizer import build_image_tokenizer

        return build_image_tokenizer(t.preset, seed=cfg.seed)
    from ..speech_tokenizer import build_speech_tokenizer

    return build_speech_tokenizer(t.preset, seed=cfg.seed)


def train_tokenizer(cfg: TrainConfig, *, quiet: bool = False, on_step=None) -> dict:
    out, steps, bs, lr = cfg.out_dir, cfg.train.max_steps, cfg.data.batch_size, cfg.optim.lr
    os.makedirs(out, exist_ok=True)
    if cfg.kind == "bpe":
        from ..text_tokenizer import SentencePieceTokenizer
        from .bpe import train_bpe

        texts = _texts_of(cfg)
        _log(f"bpe: {len(texts)} texts, vocab_size {cfg.tokenizer.vocab_size}", quiet)
        model_path = train_bpe(texts, cfg.tokenizer.vocab_size, os.path.join(out, "bpe"))
        tok = SentencePieceTokenizer(model_path, offset=_text_offset(cfg))
        spec, metrics, kind = tok.save(out), {"pieces": tok.vocab_size, "texts": len(texts)}, "text"
    elif cfg.kind == "image_vq":
        from ..image_tokenizer import open_image
        from .image_vq import fit_image_vq

        opts = _fit_options(cfg, fit_image_vq)  # a config error, before any data is read
        files = _files_of(cfg, "image")
        if not files:
            raise AromniError("image_vq: the manifests name no images")
        images = [open_image(p) for p, _ in files]
        tok = _init_tokenizer(cfg, "image")
        _log(f"image_vq: {len(images)} images, preset {cfg.tokenizer.preset}, {steps} steps", quiet)
        bar, cb = _progress(steps, "image_vq", quiet, on_step)
        with bar:
            metrics = fit_image_vq(tok, images, steps=steps, batch_size=bs, lr=lr, seed=cfg.seed, on_step=cb, **opts)
        spec, kind = tok.save(out), "image"
    elif cfg.kind == "codec":
        from ..audio_io import load_audio
        from ..levels import typical_level
        from .codec import fit_codec

        opts = _fit_options(cfg, fit_codec)  # a config error, before any data is read
        files = _files_of(cfg, "audio")
        if not files:
            raise AromniError("codec: the manifests name no audio")
        tok = _init_tokenizer(cfg, "speech")
        wavs = [load_audio(p, tok.sample_rate) for p, _ in files]
        _log(f"codec: {len(wavs)} clips, preset {cfg.tokenizer.preset}, {steps} steps", quiet)
        bar, cb = _progress(steps, "codec", quiet, on_step)
        with bar:
            metrics = fit_codec(tok, wavs, steps=steps, batch_size=bs, lr=lr, seed=cfg.seed, on_step=cb, **opts)
        tok.input_dbfs = typical_level(wavs, tok.sample_rate)  # the level it heard: clips are brought to it
        spec, kind = tok.save(out), "speech"
    else:
        raise AromniError(f"unknown kind {cfg.kind!r}")
    write_tokenizer_spec(out, kind, spec)
    _log(f"{kind} tokenizer -> {out}", quiet)
    scalars = {k: v for k, v in _plain(metrics or {}).items() if isinstance(v, (int, float, str, bool))}
    return {"kind": cfg.kind, "out_dir": out, "tokenizer": kind, "metrics": scalars}


def _fit_options(cfg: TrainConfig, fit) -> dict:
    """``tokenizer.options``, checked against the keyword arguments of ``fit``."""
    import inspect

    opts = dict(cfg.tokenizer.options or {})
    known = set(inspect.signature(fit).parameters) - {"tok", "images", "wavs", "steps", "batch_size", "lr", "seed",
                                                        "on_step"}
    bad = sorted(set(opts) - known)
    if bad:
        raise AromniError(f"config: tokenizer.options: unknown {', '.join(bad)} (known: {', '.join(sorted(known))})")
    return opts


def _text_offset(cfg: TrainConfig) -> int:
    """Where text ids start in the target layout: model.vocab when given, else the compact layout's."""
    from ..vocab import N_COMPACT_SPECIALS
    from .resolve import resolve_vocab

    if cfg.model.vocab is not None:
        layout = resolve_vocab(cfg.model.vocab, {})
        assert layout is not None  # None only for a null spec
        return layout.text_start
    return N_COMPACT_SPECIALS


def _plain(d):
    if isinstance(d, dict):
        return {k: _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    if hasattr(d, "item"):
        try:
            return d.item()
        except (ValueError, RuntimeError):
            return str(d)
    return d if isinstance(d, (int, float, str, bool, type(None))) else str(d)
