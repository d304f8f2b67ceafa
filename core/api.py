"""Python entry points: ``load`` any supported checkpoint into an :class:`Omni`, ``logits`` of a token sequence,
``export`` an Omni to another layout.

>>> import aromni
>>> from aromni.core.api import export, logits
>>> omni = aromni.load("ModalityDance/AR-Omni-Chat-v0.1")   # hub id from the local HF cache, or a path
>>> logits(omni, [0, 16384, 16385]).shape
torch.Size([3, 65536])
>>> export(omni, "chat-hf", fmt="hf")                         # transformers' ChameleonForConditionalGeneration
"""
from __future__ import annotations

import glob
import os

import torch

from . import hub
from .bundle import Omni, load_bundle, load_tokenizer, read_meta
from .export import export
from .device import resolve_device, resolve_dtype
from .errors import AromniError, CheckpointError, InputError
from .loading import Checkpoint, Loaded, detect, load_checkpoint
from .quant import check_quant, quantize
from .vocab import VocabLayout, arom_layout

__all__ = ["load", "logits", "export", "default_model_path"]

WAVTOKENIZER_ENV = "AROMNI_WAVTOKENIZER"
DEFAULT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "default")


def default_model_path() -> str:
    """The bundled default model (``core/assets/default``)."""
    if os.path.isfile(os.path.join(DEFAULT_DIR, "aromni.json")):
        return DEFAULT_DIR
    raise AromniError(f"no bundled default model ({DEFAULT_DIR} is missing); pass a model directory or hub id "
                      "(or set AROMNI_MODEL)")


def load(path: str | None = None, device="auto", dtype="auto", model: bool = True, tokenizers: bool = True,
         speech_tokenizer: str | None = None, quant: str | None = None) -> Omni:
    """Load a model and its tokenizers.

    ``path``: a native bundle, a Meta Chameleon/AR-Omni checkpoint (``params.json`` + ``consolidated*.pth``, or a
    root with ``models/7b/`` and ``tokenizer/``), a transformers Chameleon directory (AR-Omni's training fork or
    mainline), or a hub id ``org/name`` found in the local HF cache; None: the bundled default.
    ``model=False`` loads only the tokenizers. ``speech_tokenizer``: a WavTokenizer directory (.yaml + .ckpt);
    for external checkpoints also ``$AROMNI_WAVTOKENIZER`` or codec files in the checkpoint directory.
    Tokenizers that cannot be found are None. ``quant``: ``"int8"`` or ``"int4"`` (CUDA) replaces the model's
    linear layers by quantised ones after loading (:mod:`aromni.core.quant`); None or ``"none"``: as stored.
    """
    local = hub.resolve(default_model_path() if path is None else path)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    quant = check_quant(quant, dev)
    dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev)
    ck = detect(local)
    if ck.format == "aromni":
        omni = _load_bundle(ck, dev, dt, model, tokenizers)
        if speech_tokenizer and tokenizers:
            omni.speech = _load_speech(_speech_files(speech_tokenizer, "speech_tokenizer"), dev)
        if quant and omni.model is not None:
            quantize(omni.model, quant)
        return omni
    loaded = load_checkpoint(ck, device=dev, dtype=dt, model=model)
    vocab, family = _external_vocab(loaded)
    # model=False: an Omni without a model (Omni.model is typed for the usual case; users of it check for None)
    omni = Omni(model=loaded.model, vocab=vocab, family=family,  # type: ignore[arg-type]
                prompts=dict(loaded.aromni.get("prompts") or {}), source=local)
    if tokenizers and any(k.endswith("_tokenizer") for k in loaded.aromni):  # written by export.export
        for kind in ("text", "image", "speech"):
            setattr(omni, kind, load_tokenizer(kind, loaded.aromni.get(f"{kind}_tokenizer"), ck.model_dir, dev))
        if speech_tokenizer:
            omni.speech = _load_speech(_speech_files(speech_tokenizer, "speech_tokenizer"), dev)
    elif tokenizers:
        bases = _bases(ck)
        omni.text = _load_text(bases)
        omni.image = _load_image(bases, loaded.extras.get("vqmodel"), dev)
        files = (_speech_files(speech_tokenizer, "speech_tokenizer") if speech_tokenizer else
                 _speech_files(os.environ[WAVTOKENIZER_ENV], WAVTOKENIZER_ENV) if os.environ.get(WAVTOKENIZER_ENV)
                 else _find_speech(bases))
        omni.speech = _load_speech(files, dev)
    if quant and omni.model is not None:
        quantize(omni.model, quant)
    return omni


def logits(omni: Omni, ids) -> torch.Tensor:
    """Next-token logits (fp32, on the model's device) for ``ids``: [T] -> [T, V], [B, T] -> [B, T, V]."""
    if omni.model is None:
        raise AromniError("this Omni was loaded with model=False")
    t = torch.as_tensor(ids)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise InputError(f"token ids must be integers, got {t.dtype}")
    single = t.dim() == 1
    t = t.long().unsqueeze(0) if single else t.long()
    cfg = omni.model.cfg
    if t.dim() != 2 or t.shape[1] == 0:
        raise InputError(f"expected token ids of shape [T] or [B, T] with T > 0, got {tuple(t.shape)}")
    if t.shape[1] > cfg.max_seq_len:
        raise InputError(f"{t.shape[1]} tokens exceed the model's context of {cfg.max_seq_len}")
    if int(t.min()) < 0 or int(t.max()) >= cfg.vocab_size:
        raise InputError(f"token ids must lie in [0, {cfg.vocab_size}); got {int(t.min())}..{int(t.max())}")
    with torch.inference_mode():
        out = omni.model(t.to(omni.device))
    return out[0] if single else out


# ----------------------------------------------------------------------------------------------
# Internals
# ----------------------------------------------------------------------------------------------
def _load_bundle(ck: Checkpoint, dev, dt, model: bool, tokenizers: bool) -> Omni:
    if model:
        return load_bundle(ck.root, device=dev, dtype=dt, tokenizers=tokenizers)
    meta = read_meta(ck.root)
    omni = Omni(model=None, vocab=VocabLayout.from_dict(meta["vocab"]),  # type: ignore[arg-type]  # as in load()
                family=meta.get("family", "aromni"), prompts=meta.get("prompts", {}), source=ck.root)
    if tokenizers:
        omni.text = load_tokenizer("text", meta.get("text_tokenizer"), ck.root, dev)
        omni.image = load_tokenizer("image", meta.get("image_tokenizer"), ck.root, dev)
        omni.speech = load_tokenizer("speech", meta.get("speech_tokenizer"), ck.root, dev)
    return omni


def _external_vocab(loaded: Loaded) -> tuple[VocabLayout, str]:
    """aromni's own exports carry their layout; anything else is AR-Omni/Chameleon (65536 ids)."""
    meta = loaded.aromni
    if meta.get("vocab"):
        layout, family = VocabLayout.from_dict(meta["vocab"]), meta.get("family", "aromni")
    else:
        layout, family = arom_layout(), "ar-omni"
    if loaded.cfg.vocab_size < layout.vocab_size:
        raise CheckpointError(f"{loaded.checkpoint.model_dir}: the model has {loaded.cfg.vocab_size} token ids but "
                              f"the {layout.name} vocabulary layout needs {layout.vocab_size}")
    return layout, family


def _bases(ck: Checkpoint) -> list[str]:
    """Directories searched for tokenizer files, nearest first."""
    return list(dict.fromkeys(os.path.abspath(p) for p in (ck.root, ck.model_dir)))


def _optional(module: str, name: str):
    """``aromni.core.<module>.<name>``, or None while that module is not part of this install."""
    import importlib
    try:
        mod = importlib.import_module(f"{__package__}.{module}")
    except ModuleNotFoundError as e:
        if e.name == f"{__package__}.{module}":
            return None
        raise
    return getattr(mod, name, None)


def _first(paths) -> str | None:
    return next((p for p in paths if os.path.isfile(p)), None)


def _load_text(bases: list[str]):
    path = _first(os.path.join(b, *rel) for rel in (("tokenizer", "text_tokenizer.json"), ("text_tokenizer.json",),
                                                    ("tokenizer.json",)) for b in bases)
    cls = _optional("text_tokenizer", "ChameleonTextTokenizer")
    return cls(path) if path and cls else None


def _load_image(bases: list[str], vqmodel: dict | None, dev):
    for b in bases:
        for d in (os.path.join(b, "tokenizer"), b):
            yaml, ckpt = os.path.join(d, "vqgan.yaml"), os.path.join(d, "vqgan.ckpt")
            if os.path.isfile(yaml) and os.path.isfile(ckpt):
                fn = _optional("image_tokenizer", "load_vqgan")
                return fn(yaml, ckpt, device=dev) if fn else None
    if vqmodel:  # HF checkpoints carry the VQGAN encoder as model.vqmodel.* (no decoder)
        fn = _optional("image_tokenizer", "from_hf_vqmodel")
        return fn(vqmodel, device=dev) if fn else None
    return None


def _pick(paths: list[str], ext: str, what: str) -> str:
    """The one ``ext`` file of ``paths`` (preferring names mentioning wavtokenizer)."""
    hits = [p for p in paths if p.endswith(ext)]
    if len(hits) > 1:
        hits = [p for p in hits if "wavtokenizer" in os.path.basename(p).lower()] or hits
    if len(hits) != 1:
        raise CheckpointError(f"{what}: expected one WavTokenizer {ext} file, found "
                              f"{len(hits) or 'none'}{': ' + ', '.join(map(os.path.basename, hits)) if hits else ''}")
    return hits[0]


def _speech_files(spec: str, what: str) -> tuple[str, str]:
    """A WavTokenizer given as a directory (one .yaml + one .ckpt) or as its .ckpt (yaml beside it)."""
    if os.path.isdir(spec):
        files = sorted(glob.glob(os.path.join(spec, "*")))
        return _pick(files, ".yaml", f"{what} {spec}"), _pick(files, ".ckpt", f"{what} {spec}")
    if os.path.isfile(spec) and spec.endswith(".ckpt"):
        d = os.path.dirname(os.path.abspath(spec))
        return _pick(sorted(glob.glob(os.path.join(d, "*.yaml"))), ".yaml", f"{what} {spec}"), spec
    raise CheckpointError(f"{what} {spec}: not a WavTokenizer directory (.yaml + .ckpt) or .ckpt file")


def _find_speech(bases: list[str]) -> tuple[str, str] | None:
    """WavTokenizer files shipped with a checkpoint: ``*wavtokenizer*.ckpt`` + ``*wavtokenizer*.yaml``."""
    for b in bases:
        for d in (b, os.path.join(b, "wavtokenizer"), os.path.join(b, "tokenizer")):
            ck, ym = ([p for p in sorted(glob.glob(os.path.join(d, ext)))
                       if "wavtokenizer" in os.path.basename(p).lower()] for ext in ("*.ckpt", "*.yaml"))
            if len(ck) == 1 and len(ym) == 1:
                return ym[0], ck[0]
    return None


def _load_speech(files: tuple[str, str] | None, dev):
    if files is None:
        return None
    fn = _optional("speech_tokenizer", "load_wavtokenizer")
    return fn(files[0], files[1], device=dev) if fn else None
