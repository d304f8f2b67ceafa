"""Training configuration: nested dataclasses, read from one YAML file plus dotted ``key=value`` overrides.

    kind: lm | pretokenize | image_vq | codec | bpe
    out_dir, seed, model.*, data.*, loss.*, optim.*, train.*, checkpoint.*, tokenizer.*

Defaults follow AR-Omni's released pretraining recipe where one exists.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import yaml

from .. import yamlio
from ..errors import AromniError, InputError

KINDS = ("lm", "pretokenize", "image_vq", "codec", "bpe")


@dataclass
class ModelSection:
    base: str | None = None  # bundle / checkpoint to start from (weights, vocab, tokenizers)
    config: str | None = None  # a core.model.CONFIGS name, random init (when base is null)
    overrides: dict = field(default_factory=dict)  # ModelConfig fields, e.g. {max_seq_len: 512}
    # "ar-omni" | {compact: {text, image, audio, image_tokens}} | a layout dict; null: base/tokenizers
    vocab: Any = None
    tokenizers: Any = None  # a dir (bundle or tokenizer dir) or {text: dir, image: dir, speech: dir}
    family: str = "aromni"  # written into the exported bundle ("ar-omni" selects the reference prompts)
    activation_checkpointing: bool = False


@dataclass
class DataSection:
    train: list = field(default_factory=list)  # sources: {type: shards|pretrain_jsonl|parquet|manifest, path, ...}
    heldout: list = field(default_factory=list)
    batch_size: int = 2  # sequences (or packed rows) per rank per micro-batch
    min_len: int = 1
    max_len: int | None = None  # keep min_len <= len <= max_len; null: the model's max_seq_len
    shuffle_buffer: int = 1000  # 0: stream order (the reference reads shards in sorted order, unshuffled)
    pack: bool = False  # pack several samples per row; attention never crosses sample boundaries
    seq_len: int | None = None  # packed row length; null: the model's max_seq_len
    pad_id: int | None = None  # right-padding id; null: the vocabulary's eos (reference pads with 2)
    shard_size: int = 10000  # samples per .npy shard (pretokenize)


@dataclass
class LossSection:
    response_weight: float = 2.0  # tail up-weighting of the last response_len non-eos targets
    response_weighted_tasks: list = field(default_factory=lambda: ["image_caption", "speech_to_text", "caption", "asr"])
    segment_weight: float = 1.0  # weight of targets strictly between <-Ins-> and <-Res->
    mask_prompt: bool = False  # weight 0 on every target before the response
    perceptual_weight: float = 0.0  # lambda of the perceptual loss (reference: 1.0, needs a codebook)
    perceptual_tasks: list | None = None  # null: every image span; reference pretraining: [text_to_image]
    codebook: str = "image_tokenizer"  # target table: the image tokenizer's codebook, or a .pt/.npy/.safetensors
    train_projection: bool = True  # false reproduces the reference (a fixed random projection)
    normalize: str = "step"  # step: sum(ce*w) / sum(w) over the whole step (all micro-batches and ranks);
    #                         micro: the reference's mean of per-micro-batch weighted means


@dataclass
class OptimSection:
    lr: float = 1e-5
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0  # applied to matrices only
    schedule: str = "linear"  # linear (warm-up then linear decay to 0, the reference) | cosine | constant
    warmup_steps: int | None = None  # null: warmup_ratio * max_steps
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0  # floor of the decay, as a fraction of lr
    grad_clip: float = 1.0  # 0: off
    grad_accum: int = 1


@dataclass
class TrainSection:
    max_steps: int = 1000
    stop_at: int | None = None  # end this run at this step (checkpoint, no export); the schedule still spans
    #                             max_steps, and --resume continues it
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 where native (GPU; CPU with avx512_bf16/amx_bf16), else fp32 | bf16 | fp32
    strategy: str = "auto"  # auto: ddp when launched on several ranks | none | ddp | fsdp
    compile: bool = False  # torch.compile each transformer block
    release_memory: bool = False  # CPU: freed tensors leave the resident memory at once (core/train/malloc.py):
    #                               a lower peak RSS, slower steps (see docs/training.md)
    lora: dict | None = None  # {rank: 16, alpha: 32, dropout: 0, targets: [wq, wk, wv, wo, w1, w2, w3]}: base frozen
    log_every: int = 1
    eval_every: int = 0  # 0: validate only at the end (when data.heldout is set)
    eval_batches: int = 8


@dataclass
class CheckpointSection:
    every: int = 1000  # steps; 0: only at the end and on interrupt
    keep: int = 3  # newest checkpoints kept
    resume_from: str | None = None  # a checkpoint dir (``--resume`` picks the newest under out_dir)
    export_bundle: bool = True  # out_dir/bundle: aromni's native bundle (at the end)
    export_hf: bool = False  # out_dir/hf: mainline-transformers Chameleon layout (core/convert.py)
    # YAML key ``async``: sharded checkpoints are written in the background (the step loop only waits for the
    # copy of the state); a checkpoint still appears only once complete
    async_: bool = False


@dataclass
class TokenizerSection:
    preset: str = "tiny"  # build_image_tokenizer / build_speech_tokenizer preset
    init: str | None = None  # start from this tokenizer dir instead of a fresh preset
    vocab_size: int = 8000  # bpe
    max_items: int | None = None  # cap on images / clips / texts read from the manifest
    # which images / clips max_items keeps: "first" (manifest order, a file named twice counts twice) or
    # "spread" (each file once, a seeded sample across all the manifests' lines)
    pick: str = "first"
    options: dict = field(default_factory=dict)  # extra keyword arguments of fit_image_vq / fit_codec


@dataclass
class TrainConfig:
    kind: str = "lm"
    out_dir: str = "runs/aromni"
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)

    def to_dict(self) -> dict:
        return _yaml_keys(asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)


# ----------------------------------------------------------------------------------------------
# dict <-> dataclass with type checks
# ----------------------------------------------------------------------------------------------
# Python field name -> YAML key, where the YAML key is a Python keyword
YAML_KEYS = {"async_": "async"}
_FIELDS = {v: k for k, v in YAML_KEYS.items()}


def _yaml_keys(d):
    if isinstance(d, dict):
        return {YAML_KEYS.get(k, k): _yaml_keys(v) for k, v in d.items()}
    return d


def _type_ok(value, tp) -> tuple[bool, Any]:
    """Check (and gently coerce) ``value`` against annotation ``tp``; returns (ok, value)."""
    if tp is Any:
        return True, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if tp is list or origin is list:
        return isinstance(value, list), value
    if tp is dict or origin is dict:
        return isinstance(value, dict), value
    return True, value


def _build(cls, d: dict, where: str):
    if not isinstance(d, dict):
        raise AromniError(f"config: {where or 'top level'} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    known = {YAML_KEYS.get(f.name, f.name): f for f in fields(cls)}
    kwargs = {}
    for k, v in d.items():
        key = f"{where}.{k}" if where else str(k)
        if k not in known:
            raise AromniError(f"config: unknown key {key!r} (known: {', '.join(known)})")
        k = _FIELDS.get(k, k)
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _build(tp, v if v is not None else {}, key)
            continue
        ok, v2 = _type_ok(v, tp)
        if not ok:
            raise AromniError(f"config: {key} = {v!r} has the wrong type (expected {_type_name(tp)})")
        kwargs[k] = v2
    return cls(**kwargs)


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def from_dict(d: dict) -> TrainConfig:
    cfg = _build(TrainConfig, d, "")
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    choices = [("kind", cfg.kind, KINDS), ("optim.schedule", cfg.optim.schedule, ("linear", "cosine", "constant")),
               ("train.precision", cfg.train.precision, ("auto", "bf16", "fp32")),
               ("train.strategy", cfg.train.strategy, ("auto", "none", "ddp", "fsdp")),
               ("loss.normalize", cfg.loss.normalize, ("step", "micro")),
               ("tokenizer.pick", cfg.tokenizer.pick, ("first", "spread"))]
    for key, v, ok in choices:
        if v not in ok:
            raise AromniError(f"config: {key} = {v!r} (choose one of {', '.join(ok)})")
    positive = [("data.batch_size", cfg.data.batch_size), ("optim.grad_accum", cfg.optim.grad_accum),
                ("train.max_steps", cfg.train.max_steps), ("checkpoint.keep", cfg.checkpoint.keep),
                ("train.log_every", cfg.train.log_every), ("data.shard_size", cfg.data.shard_size)]
    for key, n in positive:
        if n < 1:
            raise AromniError(f"config: {key} must be >= 1 (got {n})")
    if cfg.train.stop_at is not None and cfg.train.stop_at < 1:
        raise AromniError(f"config: train.stop_at must be >= 1 or null (got {cfg.train.stop_at})")
    if cfg.optim.lr <= 0:
        raise AromniError(f"config: optim.lr must be > 0 (got {cfg.optim.lr})")
    if len(cfg.optim.betas) != 2:
        raise AromniError("config: optim.betas must be a list of two numbers")
    if cfg.kind == "lm" and not cfg.model.base and not cfg.model.config:
        raise AromniError("config: kind lm needs model.base (a bundle to start from) or model.config (a config name)")
    if cfg.kind in ("lm", "pretokenize") and not cfg.data.train:
        raise AromniError(f"config: kind {cfg.kind} needs at least one source in data.train")


# ----------------------------------------------------------------------------------------------
# YAML + overrides
# ----------------------------------------------------------------------------------------------
def parse_value(text: str):
    """An override value: YAML scalars/lists/maps; ``1e-4`` (YAML 1.1 keeps it a string) becomes a float."""
    try:
        v = yamlio.loads(text) if text != "" else ""
    except yaml.YAMLError:
        return text
    return _fix_floats(v)


_SCI = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _fix_floats(obj):
    """YAML 1.1 reads ``1e-4`` as a string; turn such strings back into floats everywhere."""
    if isinstance(obj, dict):
        return {k: _fix_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fix_floats(v) for v in obj]
    if isinstance(obj, str) and _SCI.fullmatch(obj):
        return float(obj)
    return obj


def apply_override(d: dict, item: str) -> None:
    """Set ``a.b.c=value`` in the nested dict ``d`` (list elements by index: ``data.train.0.path=x``)."""
    if "=" not in item:
        raise AromniError(f"override {item!r} is not key=value (e.g. optim.lr=3e-4)")
    key, _, raw = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise AromniError(f"override {item!r}: bad key {key!r}")
    node = d
    for i, p in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise AromniError(f"override {item!r}: {'.'.join(parts[:i])} has no element {p}")
            node = node[int(p)]
        else:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
        if not isinstance(node, (dict, list)):
            raise AromniError(f"override {item!r}: {'.'.join(parts[:i + 1])} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise AromniError(f"override {item!r}: no list element {last}")
        node[int(last)] = parse_value(raw)
    else:
        node[last] = parse_value(raw)


def load_config(path: str, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply ``key=value`` overrides, validate. Relative paths stay relative to the CWD."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yamlio.loads(f.read(), f.name)
    except OSError as e:
        raise InputError(f"cannot read config ({e.strerror or e})", path) from None
    except yaml.YAMLError as e:
        raise InputError(f"not valid YAML ({str(e).splitlines()[0]})", path) from None
    raw = _fix_floats(raw if raw is not None else {})
    if not isinstance(raw, dict):
        raise InputError("a training config must be a YAML mapping", path)
    # defaults first, so overrides can reach into sections the file leaves out
    d = TrainConfig().to_dict()
    _merge(d, raw)
    for item in overrides or []:
        apply_override(d, item)
    try:
        return from_dict(d)
    except AromniError as e:
        raise InputError(str(e), path) from None


def _merge(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k not in ("overrides", "vocab", "tokenizers"):
            _merge(base[k], v)
        else:
            base[k] = v


def save_config(cfg: TrainConfig, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(cfg.to_yaml())
    os.replace(tmp, path)
