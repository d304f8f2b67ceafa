"""Checkpoint loading: find the layout, read weights safely (mmap, weights-only), map keys, check shapes, assign.

Memory: weights are memory-mapped (safetensors, ``torch.load(mmap=True, weights_only=True)``), the model is
built on the meta device and the mapped tensors are assigned to it, cast once to the target dtype. With the
stored dtype on CPU no copy is made at all; otherwise peak memory is the model in the target dtype plus the
file pages the kernel keeps cached.
"""
from __future__ import annotations

import functools
import glob
import json
import os
import pickle
import re
from dataclasses import dataclass, field

import torch

from . import convert
from .errors import CheckpointError
from .model import ModelConfig, Transformer

PICKLE_EXTS = (".pth", ".pt", ".bin", ".ckpt")
BUNDLE_FILE = "aromni.json"  # a native bundle's metadata (bundle.py)
FORMAT = "aromni-bundle"


# ----------------------------------------------------------------------------------------------
# Safe readers
# ----------------------------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    """The first sentence of an exception message (torch's run on with advice)."""
    msg = str(e).strip().splitlines()
    return msg[0].split(". ")[0].rstrip(".") if msg else type(e).__name__


def torch_load(path: str) -> dict:
    """A pickled state dict (.pth/.bin/.ckpt), weights-only (no code runs) and memory-mapped when possible.

    Lightning-style ``{"state_dict": {...}}`` is unwrapped; non-tensor entries are dropped.
    """
    def _load(mmap: bool):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            obj = _load(mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # legacy (non-zip) serialization cannot be mapped
                raise
            obj = _load(mmap=False)
    except pickle.UnpicklingError as e:
        m = re.search(r"unsupported (?:global|operand)[: ]*(?:GLOBAL )?(\S+)", str(e), re.IGNORECASE)
        detail = f"it references {m.group(1).rstrip('.')}" if m else _first_line(e)
        raise CheckpointError(f"{path}: refusing to load: the pickle holds more than tensors ({detail}); aromni "
                              "reads pickled checkpoints only in weights-only mode, so no code in them runs") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # truncated zip, bad magic, EOF, ...
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({_first_line(e)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_safetensors(path: str, keys=None) -> dict:
    """Tensors of a safetensors file, memory-mapped (no copy until touched)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in (f.keys() if keys is None else keys)}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # SafetensorError: truncated / bad header
        raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({_first_line(e)})") from None


def read_weights(path: str) -> dict:
    """One weight file by extension (safetensors, or a pickle read weights-only)."""
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    if path.endswith(PICKLE_EXTS):
        return torch_load(path)
    raise CheckpointError(f"{path}: unknown weight file type (expected .safetensors, .pth, .bin or .ckpt)")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return d


def read_meta(root: str) -> dict:
    """A native bundle's ``aromni.json``."""
    meta = _read_json(os.path.join(root, BUNDLE_FILE))
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{root}: {BUNDLE_FILE} is not an aromni bundle")
    _check_meta(meta, os.path.join(root, BUNDLE_FILE))
    return meta


def _check_meta(meta: dict, where: str) -> None:
    """The model and vocabulary sections of a bundle's metadata are complete and of the right types."""
    from dataclasses import fields

    from .vocab import VocabLayout

    for key in ("model", "vocab"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{where}: no \"{key}\" object")
    try:
        cfg = ModelConfig.from_dict(meta["model"])
        VocabLayout.from_dict(meta["vocab"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{where}: incomplete or malformed \"model\"/\"vocab\" ({type(e).__name__}: {e})"
                              ) from None
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if str(f.type).split(" |")[0] in ("int", "float") and not (v is None and "None" in str(f.type)) \
                and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise CheckpointError(f"{where}: model.{f.name} must be a number, not {v!r}")


# ----------------------------------------------------------------------------------------------
# Page release: a tensor read through a memory map and then copied (cast, permuted, moved to a GPU) leaves
# its file pages resident until the whole map is dropped; released one tensor at a time, peak memory stays
# near the loaded model's size instead of model + file.
# ----------------------------------------------------------------------------------------------
_MADV_DONTNEED = 4
_PAGE = 4096


def _file_maps() -> list[tuple[int, int]]:
    """Address ranges of this process's file-backed mappings (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for ln in lines:
        parts = ln.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            a, b = parts[0].split("-")
            out.append((int(a, 16), int(b, 16)))
    return out


@functools.cache
def _madvise():
    """libc's ``madvise``, looked up once per process (``find_library`` runs a compiler/ldconfig query)."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return fn


def release_pages(tensors, maps: list[tuple[int, int]] | None = None) -> None:
    """Drop resident pages of tensors that lie in a file mapping (clean file pages: later reads re-fault them
    from the page cache, so this never changes data). Heap tensors are left alone."""
    maps = _file_maps() if maps is None else maps
    fn = _madvise() if maps else None
    if fn is None:
        return
    for t in tensors:
        if t.device.type != "cpu" or not t.is_contiguous() or t.numel() == 0:
            continue
        a = t.data_ptr()
        b = a + t.numel() * t.element_size()
        if not any(lo <= a and b <= hi for lo, hi in maps):
            continue
        start, end = -(-a // _PAGE) * _PAGE, b // _PAGE * _PAGE
        if end > start:
            fn(start, end - start, _MADV_DONTNEED)


# ----------------------------------------------------------------------------------------------
# Layout detection
# ----------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A located checkpoint, not yet read."""

    format: str        # "aromni" | "meta" | "hf" (mainline or AR-Omni fork: decided when reading)
    root: str          # directory the tokenizers are searched from
    model_dir: str     # directory with the weights
    files: list[str]   # weight files (Meta: one per model-parallel rank)
    config: dict = field(default_factory=dict)  # aromni.json / merged params.json / config.json


def _meta_files(d: str) -> list[str]:
    single = os.path.join(d, "consolidated.pth")
    if os.path.isfile(single):
        return [single]
    return sorted(glob.glob(os.path.join(d, "consolidated.[0-9][0-9].pth")))


def _hf_files(d: str) -> list[str]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        p = os.path.join(d, index)
        if os.path.isfile(p):
            wm = _read_json(p).get("weight_map")
            if not isinstance(wm, dict):
                raise CheckpointError(f"{p}: no weight_map")
            return [os.path.join(d, f) for f in sorted(set(wm.values()))]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(d, name)):
            return [os.path.join(d, name)]
    return sorted(glob.glob(os.path.join(d, "model-*.safetensors")))


def _meta_dir(root: str) -> str | None:
    """``root`` itself, ``root/models/7b`` (AR-Omni/Chameleon layout), or the only ``root/models/*``."""
    if os.path.isfile(os.path.join(root, "params.json")):
        return root
    cands = [os.path.join(root, "models", "7b")] + sorted(glob.glob(os.path.join(root, "models", "*")))
    for c in dict.fromkeys(cands):
        if os.path.isfile(os.path.join(c, "params.json")) and _meta_files(c):
            return c
    return None


def detect(path: str) -> Checkpoint:
    """Find which layout ``path`` (a directory, or a file inside one) holds."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or directory")
    d = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if os.path.isfile(os.path.join(d, BUNDLE_FILE)):
        meta = read_meta(d)
        return Checkpoint("aromni", d, d, [os.path.join(d, "model.safetensors")], meta)
    hf_cfg = os.path.join(d, "config.json")
    hf = _hf_files(d) if os.path.isfile(hf_cfg) else []
    if hf:
        return Checkpoint("hf", d, d, hf, _read_json(hf_cfg))
    md = _meta_dir(d)
    if md is not None:
        files = _meta_files(md)
        if not files:
            raise CheckpointError(f"{md}: params.json but no consolidated.pth / consolidated.NN.pth")
        cp = os.path.join(md, "consolidate_params.json")
        params = convert.merge_meta_params(_read_json(os.path.join(md, "params.json")),
                                           _read_json(cp) if os.path.isfile(cp) else None)
        # tokenizers live next to models/: <root>/models/7b + <root>/tokenizer
        parent = os.path.dirname(os.path.abspath(md))
        root = os.path.dirname(parent) if os.path.basename(parent) == "models" else md
        return Checkpoint("meta", root, md, files, params)
    if os.path.isfile(hf_cfg):
        raise CheckpointError(f"{d}: config.json but no weights (model.safetensors, model-*.safetensors + "
                              "index, or pytorch_model.bin)")
    raise CheckpointError(f"{d}: not a checkpoint (expected aromni.json, config.json + safetensors, or Meta "
                          "params.json + consolidated.pth, possibly under models/7b/)")


# ----------------------------------------------------------------------------------------------
# Reading and loading
# ----------------------------------------------------------------------------------------------
@dataclass
class Loaded:
    model: Transformer | None
    cfg: ModelConfig
    format: str              # "aromni" | "meta" | "hf-dev" | "hf"
    checkpoint: Checkpoint
    extras: dict = field(default_factory=dict)   # {"vqmodel": state} from HF layouts
    aromni: dict = field(default_factory=dict)   # {"vocab": ..., "family": ...} stored by aromni's exporters


def _hf_flavour(state: dict, conf: dict) -> str:
    """Mainline transformers stores per-head qk-norms [heads, hd]; the AR-Omni fork one [hd] LayerNorm."""
    qn = next((v for k, v in state.items() if k.endswith("self_attn.q_norm.weight")), None)
    if qn is not None:
        return "hf" if qn.dim() == 2 else "hf-dev"
    if "qk_layernorm" in conf or "ChameleonForCausalLM" in (conf.get("architectures") or []):
        return "hf-dev"
    return "hf"


def read_checkpoint(ck: Checkpoint) -> tuple[dict, ModelConfig, str, dict]:
    """Read weights (mapped) and config; check them. Returns (aromni state, cfg, format, extras)."""
    if ck.format == "aromni":
        cfg = ModelConfig.from_dict(ck.config["model"])
        state = read_safetensors(ck.files[0])
        convert.check_state(state, convert.expected_shapes("aromni", cfg), ck.files[0])
        return state, cfg, "aromni", {}
    if ck.format == "meta":
        return _read_meta(ck)
    state = {}
    for f in ck.files:
        state.update(read_weights(f))
    fmt = _hf_flavour(state, ck.config)
    cfg = convert.config_from_hf(ck.config, fmt)
    src = {k: v for k, v in state.items() if not k.startswith(convert.VQ_PREFIX)}
    convert.check_state(src, convert.expected_shapes(fmt, cfg), ck.model_dir)
    st, extras = convert.to_aromni(state, fmt, cfg)
    st, cfg = convert.collapse_qk_norms(st, cfg)
    _release_replaced(state.values(), st, extras)
    return st, cfg, fmt, extras


def _release_replaced(sources, st: dict, extras: dict) -> None:
    """Release the mapped pages of source tensors that conversion replaced by copies (permuted q/k, merges)."""
    kept = {id(v) for v in st.values()} | {id(v) for d in extras.values() for v in d.values()}
    release_pages([v for v in sources if id(v) not in kept])


def _read_meta(ck: Checkpoint) -> tuple[dict, ModelConfig, str, dict]:
    p = ck.config
    n_declared = int(p.get("model_parallel_size") or 1)
    if len(ck.files) == 1 and ck.files[0].endswith("consolidated.pth"):
        n_declared = 1  # a single consolidated file is complete whatever the training run used
    if len(ck.files) != n_declared and n_declared > 1:
        raise CheckpointError(f"{ck.model_dir}: model_parallel_size is {n_declared} but {len(ck.files)} "
                              "consolidated.NN.pth shards were found")
    shards = [torch_load(f) for f in ck.files]
    emb = shards[0].get("tok_embeddings.weight")
    cfg = convert.config_from_meta(p, vocab_size=int(emb.shape[0]) if emb is not None else None)
    shards = [convert.unfuse_meta(s, cfg, len(shards)) for s in shards]
    source = ck.files[0] if len(ck.files) == 1 else ck.model_dir
    if len(shards) > 1:
        exp = _shard_shapes(cfg, len(shards))  # the merged shapes divided along each split dim
        for f, s in zip(ck.files, shards):
            convert.check_state(s, exp, f, optional=(convert.ROPE_KEY,))
        state, cfg = convert.merge_meta_shards(shards, cfg)
    else:
        state = shards[0]
        convert.check_state(state, convert.expected_shapes("meta", cfg), source, optional=(convert.ROPE_KEY,))
    st, extras = convert.to_aromni(state, "meta", cfg)
    st, cfg = convert.collapse_qk_norms(st, cfg)
    _release_replaced([v for s in shards for v in s.values()], st, extras)
    return st, cfg, "meta", extras


def _shard_shapes(cfg: ModelConfig, n: int) -> dict[str, tuple]:
    exp = {}
    for k, shape in convert.expected_shapes("meta", cfg).items():
        d = convert.shard_dim(k)
        if d is not None:
            shape = tuple(s // n if i == d else s for i, s in enumerate(shape))
        exp[k] = shape
    return exp


def load_checkpoint(path: str | Checkpoint, device="cpu", dtype: torch.dtype | None = torch.float32,
                    model: bool = True) -> Loaded:
    """Load any supported layout into an aromni Transformer (``model=False``: read and check only).

    ``dtype=None`` keeps the stored dtype.
    """
    ck = detect(path) if isinstance(path, str) else path
    st, cfg, fmt, extras = read_checkpoint(ck)
    m = load_state_into(cfg, st, device=device, dtype=dtype, source=ck.model_dir) if model else None
    return Loaded(m, cfg, fmt, ck, extras, dict(ck.config.get("aromni") or {}))


def load_state_into(cfg: ModelConfig, state: dict, device="cpu", dtype=torch.float32,
                    source: str = "checkpoint") -> Transformer:
    """Build a model on the meta device and assign ``state`` (aromni key names), cast once to ``dtype``."""
    model = convert.meta_model(cfg)
    convert.check_state(state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, source)
    maps = _file_maps()
    cast = {}
    for k, v in state.items():  # one tensor at a time: a mapped source's pages go as soon as it is copied
        cast[k] = v.to(device=device, dtype=dtype)
        if cast[k] is not v:
            release_pages([v], maps)
    model.load_state_dict(cast, assign=True)
    model.reset_rope()
    return model.eval()
