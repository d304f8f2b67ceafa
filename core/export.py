"""Writing a model in another layout: a native bundle, a transformers Chameleon directory (mainline ``hf`` or the
AR-Omni training fork ``hf-dev``, with a synthesised ``config.json`` and vocabulary map) or a Meta consolidated
checkpoint. The key and tensor conversions themselves are ``convert.py``'s pure functions.
"""
from __future__ import annotations

import json
import os

import torch

from . import convert
from .bundle import save_bundle
from .errors import CheckpointError
from .model import ModelConfig, Transformer


# ----------------------------------------------------------------------------------------------
# HF config and vocabulary
# ----------------------------------------------------------------------------------------------
def synth_vocabulary_map(layout) -> dict[str, int]:
    """A name -> id map in Chameleon's naming, for ``vocabulary_map`` when no tokenizer vocabulary is at hand.

    Only image-token names (``IMGIMG...``) and ``<image>`` mean anything to transformers; other ids get
    Chameleon's special/reserved names (ar-omni layout) or placeholder names.
    """
    from .text_tokenizer import image_code_name

    names = {0: "<s>", 1: "<pad>", 2: "</s>", 3: "<unk>"} if layout.name == "ar-omni" else {}
    if layout.name == "ar-omni":
        names.update({8196: "<eoss>", 8197: "<racm3:break>", 8711: "<image>"})
    for c in range(layout.image_codes):
        names[layout.image_offset + c] = image_code_name(c)
    vm = {}
    for i in range(layout.vocab_size):
        if i in names:
            vm[names[i]] = i
        elif layout.name == "ar-omni" and 8198 <= i < 16384:
            vm[f"<reserved{i - 4:05d}>"] = i
        else:
            vm[f"<tok{i:05d}>"] = i
    return vm


def hf_config(cfg: ModelConfig, fmt: str = "hf", layout=None, vocabulary_map: dict | None = None,
              vq_config: dict | None = None, dtype: torch.dtype = torch.bfloat16, extra: dict | None = None) -> dict:
    """config.json for the mainline (``hf``) or AR-Omni-fork (``hf-dev``) Chameleon classes."""
    if fmt == "hf" and not cfg.qk_norm:
        raise CheckpointError("transformers' Chameleon always applies qk-norm; this model has none")
    sp = layout.specials if layout is not None else {"bos": 0, "eos": 2, "pad": 1}
    if vocabulary_map is None:
        vocabulary_map = synth_vocabulary_map(layout) if layout is not None else {}
    c = {
        "architectures": ["ChameleonForConditionalGeneration" if fmt == "hf" else "ChameleonForCausalLM"],
        "model_type": "chameleon",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": False, "model_parallel_size": 1, "swin_norm": cfg.swin_norm,
        "bos_token_id": sp["bos"], "eos_token_id": sp["eos"], "pad_token_id": sp["pad"],
        "torch_dtype": str(dtype).removeprefix("torch."), "vocabulary_map": vocabulary_map,
    }
    if fmt == "hf":
        c["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    else:
        c["qk_layernorm"] = cfg.qk_norm
        c["rope_scaling"] = None
    if vq_config is not None:
        c["vq_config"] = vq_config
    if extra:
        c.update(extra)
    return c


# ----------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------
def write_safetensors(state: dict, out: str, max_shard_bytes: int, prefix: str = "model") -> list[str]:
    """state -> ``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` + index json."""
    from safetensors.torch import save_file

    groups: list[dict[str, torch.Tensor]] = []
    cur: dict[str, torch.Tensor] = {}
    size = 0
    for k, v in state.items():
        nb = v.numel() * v.element_size()
        if cur and size + nb > max_shard_bytes:
            groups.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += nb
    groups.append(cur)
    files = []
    if len(groups) == 1:
        names = [f"{prefix}.safetensors"]
    else:
        names = [f"{prefix}-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    weight_map = {}
    for name, g in zip(names, groups):
        tmp = os.path.join(out, name + ".tmp")
        save_file({k: v.contiguous() for k, v in g.items()}, tmp, metadata={"format": "pt"})
        os.replace(tmp, os.path.join(out, name))
        weight_map.update({k: name for k in g})
        files.append(os.path.join(out, name))
    if len(groups) > 1:
        total = sum(v.numel() * v.element_size() for v in state.values())
        with open(os.path.join(out, f"{prefix}.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    return files


def model_state(model: Transformer, dtype: torch.dtype | None) -> dict:
    return {k: (v if dtype is None else v.to(dtype)).detach().cpu() for k, v in model.state_dict().items()}


def _aromni_meta(layout, family: str | None) -> dict:
    d = {}
    if layout is not None:
        d["vocab"] = layout.to_dict()
    if family:
        d["family"] = family
    return d


def export_hf(model: Transformer, out: str, fmt: str = "hf", layout=None, family: str | None = None,
              vocabulary_map: dict | None = None, vq_config: dict | None = None, vqmodel: dict | None = None,
              dtype: torch.dtype | None = None, max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """Write ``config.json`` + safetensors loadable by transformers (``hf``) or the AR-Omni fork (``hf-dev``).

    ``vqmodel``: image-tokenizer encoder weights to store as ``model.vqmodel.*`` (transformers initialises
    them randomly when absent). Returns the written weight files.
    """
    cfg = model.cfg
    state = convert.from_aromni(model_state(model, dtype), fmt, cfg)
    for k, v in (vqmodel or {}).items():
        state[convert.VQ_PREFIX + k] = v.detach().cpu()
    os.makedirs(out, exist_ok=True)
    dt = dtype or model.tok_embeddings.weight.dtype
    extra = {"aromni": _aromni_meta(layout, family)} if layout is not None or family else None
    conf = hf_config(cfg, fmt, layout, vocabulary_map, vq_config, dt, extra)
    files = write_safetensors(state, out, max_shard_bytes)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(conf, f, indent=1)
    return files


def export_meta(model: Transformer, out: str, shards: int = 1, layout=None, family: str | None = None,
                dtype: torch.dtype | None = None) -> list[str]:
    """Write a Meta consolidated checkpoint dir: params.json, consolidate_params.json, consolidated[.NN].pth."""
    cfg = model.cfg
    st = model_state(model, dtype)
    if shards == 1:
        state = convert.from_aromni(st, "meta", cfg)
    else:  # keep one norm row per head so that each shard gets its heads' norm
        state = {convert.rename(k, "meta", to_aromni=False):
                 v.unsqueeze(0).expand(convert.norm_heads(k, cfg), -1) if convert.is_qk_norm(k) and v.dim() == 1 else v
                 for k, v in st.items()}
        state[convert.ROPE_KEY] = convert.from_aromni({}, "meta", cfg)[convert.ROPE_KEY]
    rope = state.pop(convert.ROPE_KEY)
    os.makedirs(out, exist_ok=True)
    params = {"model": convert.meta_params(cfg)}
    if layout is not None or family:
        params["aromni"] = _aromni_meta(layout, family)
    parts = [state] if shards == 1 else convert.split_meta_shards(state, cfg, shards)
    names = ["consolidated.pth"] if shards == 1 else [f"consolidated.{i:02d}.pth" for i in range(shards)]
    files = []
    for name, p in zip(names, parts):
        p = dict(p)
        p[convert.ROPE_KEY] = rope
        path = os.path.join(out, name)
        torch.save(p, path + ".tmp")
        os.replace(path + ".tmp", path)
        files.append(path)
    with open(os.path.join(out, "params.json"), "w") as f:
        json.dump(params, f, indent=1)
    with open(os.path.join(out, "consolidate_params.json"), "w") as f:
        json.dump({"model_parallel_size": shards}, f)
    return files


def _text_vocabulary_map(text) -> dict | None:
    """A Chameleon text tokenizer's name -> id map, ``<reserved08707>`` renamed ``<image>`` as transformers does."""
    tok = getattr(text, "tok", None)
    if tok is None or not hasattr(tok, "get_vocab"):
        return None
    vm = dict(tok.get_vocab(with_added_tokens=True))
    if "<reserved08707>" in vm:
        vm["<image>"] = vm.pop("<reserved08707>")
    return vm


def _hf_vq(image) -> tuple[dict | None, dict | None]:
    """(vq_config, encoder state) of a VQGAN image tokenizer that transformers' ChameleonVQVAE can hold.

    transformers' VQ encoder uses 32 GroupNorm groups; presets with fewer are left out (None, None).
    """
    model = getattr(image, "model", None)
    c = getattr(model, "cfg", None)
    if model is None or c is None or getattr(c, "norm_groups", 32) != 32:
        return None, None
    vq_config = {"embed_dim": c.embed_dim, "num_embeddings": c.n_embed, "double_latent": False,
                 "latent_channels": c.z_channels, "resolution": c.resolution, "in_channels": c.in_channels,
                 "base_channels": c.ch, "channel_multiplier": list(c.ch_mult), "num_res_blocks": c.num_res_blocks,
                 "attn_resolutions": list(c.attn_resolutions), "dropout": c.dropout}
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("decoder.")}
    return vq_config, state


def export(omni, out: str, fmt: str = "hf", dtype: torch.dtype | None = None,
           max_shard_bytes: int = 5 * 2**30) -> None:
    """Write a loaded :class:`~aromni.core.bundle.Omni` as a native bundle (``aromni``), a transformers
    Chameleon directory (``hf``: mainline, ``hf-dev``: the AR-Omni training fork) or a Meta checkpoint (``meta``).

    HF exports also carry aromni's vocabulary layout and tokenizer specs in ``config.json["aromni"]`` (plus
    the tokenizer files), so ``aromni.load`` restores the same Omni; transformers ignores them.
    """
    if fmt not in convert.FORMATS:
        raise CheckpointError(f"unknown export format {fmt!r} (known: {', '.join(convert.FORMATS)})")
    if fmt == "aromni":
        if dtype is not None and dtype != omni.model.tok_embeddings.weight.dtype:
            raise CheckpointError("a native bundle is written in the model's dtype; convert first "
                                  "(omni.model.to(dtype)) or export to hf/meta with dtype=")
        save_bundle(omni, out)
        return
    if fmt == "meta":
        export_meta(omni.model, out, layout=omni.vocab, family=omni.family, dtype=dtype)
        return
    os.makedirs(out, exist_ok=True)
    vq_config, vq_state = _hf_vq(omni.image)
    specs = {f"{kind}_tokenizer": tok.save(out)
             for kind, tok in (("text", omni.text), ("image", omni.image), ("speech", omni.speech)) if tok is not None}
    meta = {**_aromni_meta(omni.vocab, omni.family), **specs, "prompts": omni.prompts}
    export_hf(omni.model, out, fmt=fmt, layout=omni.vocab, family=omni.family,
              vocabulary_map=_text_vocabulary_map(omni.text), vq_config=vq_config, vqmodel=vq_state, dtype=dtype,
              max_shard_bytes=max_shard_bytes)
    path = os.path.join(out, "config.json")
    with open(path) as f:
        conf = json.load(f)
    conf["aromni"] = meta
    with open(path, "w") as f:
        json.dump(conf, f, indent=1)
