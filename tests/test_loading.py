"""Checkpoint layouts (Meta, HF-dev, mainline HF, native bundle), hub ids, safety and error messages, API."""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

import aromni
from aromni.core import api, convert, export
from aromni.core.bundle import Omni, save_bundle
from aromni.core.errors import AromniError, CheckpointError, InputError
from aromni.core.loading import detect, load_checkpoint
from aromni.core.model import CONFIGS, ModelConfig, build_model, get_config
from aromni.core.vocab import arom_layout, compact_layout

@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield

IDS = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def make_model(seed: int = 0, **kw):
    m = build_model(get_config("tiny", **kw), seed=seed)
    g = torch.Generator().manual_seed(seed)
    for name, p in m.named_parameters():
        if p.dim() == 1 or "norm" in name:
            p.copy_((0.1 if name.endswith("bias") else 1) + 0.3 * torch.randn(p.shape, generator=g))
    return m


def tiny_layout():
    return compact_layout(text=100, image=64, audio=64, image_tokens=4)  # 256 ids


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def layouts(model, tmp_path_factory):
    """The same weights in every layout."""
    d = tmp_path_factory.mktemp("layouts")
    export.export_meta(model, str(d / "meta"))
    export.export_meta(model, str(d / "root" / "models" / "7b"), shards=2)
    export.export_hf(model, str(d / "hf-dev"), fmt="hf-dev")
    export.export_hf(model, str(d / "hf"), fmt="hf", max_shard_bytes=60_000)  # several shards + index
    save_bundle(Omni(model=model, vocab=tiny_layout()), str(d / "bundle"))
    return d


# --- the same function from every layout -------------------------------------------------------------------
@pytest.mark.parametrize("name,fmt", [("meta", "meta"), ("root", "meta"), ("root/models/7b", "meta"),
                                      ("hf-dev", "hf-dev"), ("hf", "hf"), ("bundle", "aromni")])
def test_every_layout_gives_identical_logits(layouts, model, name, fmt):
    loaded = load_checkpoint(str(layouts / name))
    assert loaded.format == fmt
    assert replace(loaded.cfg, multiple_of=256, ffn_dim_multiplier=None) == model.cfg  # Meta spells the FFN size
    assert torch.equal(loaded.model(IDS), model(IDS))


def test_layout_files(layouts):
    assert (layouts / "hf" / "model.safetensors.index.json").is_file()
    assert len(list((layouts / "hf").glob("model-*-of-*.safetensors"))) > 1
    params = json.loads((layouts / "meta" / "params.json").read_text())
    assert params["model"]["dim"] == 64 and params["model"]["qk_normalization"] is True
    assert (layouts / "meta" / "consolidate_params.json").is_file()
    assert sorted(os.listdir(layouts / "root" / "models" / "7b")) == [
        "consolidate_params.json", "consolidated.00.pth", "consolidated.01.pth", "params.json"]
    ck = detect(str(layouts / "root"))
    assert ck.root == str(layouts / "root") and ck.model_dir.endswith(os.path.join("models", "7b"))
    # files hold exactly the reference key names
    meta_keys = set(torch.load(layouts / "meta" / "consolidated.pth", weights_only=True))
    assert meta_keys == set(convert.expected_shapes("meta", CONFIGS["tiny"]))
    dev_keys = set(load_file(layouts / "hf-dev" / "model.safetensors"))
    assert dev_keys == set(convert.expected_shapes("hf-dev", CONFIGS["tiny"]))


def test_meta_7b_keys_follow_reference():
    """Meta layout (docs/formats.md): Meta names, qk-norms [128] shared by heads, rope.freqs."""
    per_layer = {"attention.wq.weight": (4096, 4096), "attention.wk.weight": (4096, 4096),
                 "attention.wv.weight": (4096, 4096), "attention.wo.weight": (4096, 4096),
                 "attention.q_normalization.weight": (128,), "attention.q_normalization.bias": (128,),
                 "attention.k_normalization.weight": (128,), "attention.k_normalization.bias": (128,),
                 "feed_forward.w1.weight": (11008, 4096), "feed_forward.w3.weight": (11008, 4096),
                 "feed_forward.w2.weight": (4096, 11008), "attention_norm.weight": (4096,),
                 "ffn_norm.weight": (4096,)}
    want = {f"layers.{i}.{k}": v for i in range(32) for k, v in per_layer.items()}
    want.update({"tok_embeddings.weight": (65536, 4096), "norm.weight": (4096,), "output.weight": (65536, 4096),
                 "rope.freqs": (64,)})
    assert convert.expected_shapes("meta", CONFIGS["7b"]) == want


def test_hf_dev_7b_keys_follow_reference():
    """AR-Omni training layout (docs/formats.md): model.* names, q/k unpermuted, qk-norm [128]."""
    per_layer = {"self_attn.q_proj.weight": (4096, 4096), "self_attn.k_proj.weight": (4096, 4096),
                 "self_attn.v_proj.weight": (4096, 4096), "self_attn.o_proj.weight": (4096, 4096),
                 "self_attn.q_norm.weight": (128,), "self_attn.q_norm.bias": (128,),
                 "self_attn.k_norm.weight": (128,), "self_attn.k_norm.bias": (128,),
                 "mlp.gate_proj.weight": (11008, 4096), "mlp.up_proj.weight": (11008, 4096),
                 "mlp.down_proj.weight": (4096, 11008), "input_layernorm.weight": (4096,),
                 "post_attention_layernorm.weight": (4096,)}
    want = {f"model.layers.{i}.{k}": v for i in range(32) for k, v in per_layer.items()}
    want.update({"model.embed_tokens.weight": (65536, 4096), "model.norm.weight": (4096,),
                 "lm_head.weight": (65536, 4096)})
    assert convert.expected_shapes("hf-dev", CONFIGS["7b"]) == want


def test_hf_dev_weights_equal_meta_weights(layouts):
    """The fork's checkpoints load 1:1 into a Meta-style model (no permutation); mainline's q/k are permuted."""
    meta = torch.load(layouts / "meta" / "consolidated.pth", weights_only=True)
    dev = load_file(layouts / "hf-dev" / "model.safetensors")
    assert torch.equal(dev["model.layers.1.self_attn.q_proj.weight"], meta["layers.1.attention.wq.weight"])
    assert torch.equal(dev["model.layers.1.self_attn.q_norm.bias"], meta["layers.1.attention.q_normalization.bias"])
    hf = {}
    for f in (layouts / "hf").glob("*.safetensors"):
        hf.update(load_file(f))
    assert not torch.equal(hf["model.layers.1.self_attn.q_proj.weight"], meta["layers.1.attention.wq.weight"])
    assert hf["model.layers.1.self_attn.q_norm.weight"].shape == (4, 16)


# --- Meta variants -----------------------------------------------------------------------------------------
def _meta_dir(model, d, state_fn=None, params_fn=None):
    export.export_meta(model, str(d))
    if state_fn:
        st = torch.load(d / "consolidated.pth", weights_only=True)
        torch.save(state_fn(st), d / "consolidated.pth")
    if params_fn:
        p = json.loads((d / "params.json").read_text())
        (d / "params.json").write_text(json.dumps(params_fn(p)))
    return d


def test_meta_rope_freqs_none_or_absent(model, tmp_path):
    for name, fn in (("none", lambda s: {**s, "rope.freqs": None}),
                     ("absent", lambda s: {k: v for k, v in s.items() if k != "rope.freqs"})):
        d = _meta_dir(model, tmp_path / name, fn)
        assert torch.equal(load_checkpoint(str(d)).model(IDS), model(IDS))


def test_meta_prefused_wqkv_w13(model, tmp_path):
    def fuse(st):
        out = dict(st)
        for i in range(model.cfg.n_layers):
            p = f"layers.{i}."
            qkv = [out.pop(f"{p}attention.{w}.weight") for w in ("wq", "wk", "wv")]
            w13 = [out.pop(f"{p}feed_forward.{w}.weight") for w in ("w1", "w3")]
            out[p + "attention.wqkv.weight"], out[p + "feed_forward.w13.weight"] = torch.cat(qkv), torch.cat(w13)
        return out
    d = _meta_dir(model, tmp_path / "fused", fuse)
    assert torch.equal(load_checkpoint(str(d)).model(IDS), model(IDS))


def test_meta_params_merge_and_vocab_from_weights(model, tmp_path):
    def params(p):  # dims at the top level, vocab unknown (-1) as in LLaMA's params.json
        return {**p.pop("model"), "vocab_size": -1}
    d = _meta_dir(model, tmp_path / "flat", params_fn=params)
    loaded = load_checkpoint(str(d))
    assert loaded.cfg.vocab_size == 256 and torch.equal(loaded.model(IDS), model(IDS))


def test_meta_shards_with_per_rank_qk_norms(tmp_path):
    m = make_model(seed=5, qk_norm_per_head=True)
    for k, p in m.named_parameters():  # heads of one rank share a norm, ranks differ
        if "_norm." in k and p.dim() == 2:
            p.copy_(p[::2].repeat_interleave(2, 0) if ".q_norm." in k else p)
    export.export_meta(m, str(tmp_path / "sh"), shards=2)
    loaded = load_checkpoint(str(tmp_path / "sh"))
    assert loaded.cfg.qk_norm_per_head
    assert torch.equal(loaded.model(IDS), m(IDS))
    os.remove(tmp_path / "sh" / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match="model_parallel_size is 2 but 1"):
        load_checkpoint(str(tmp_path / "sh"))


def test_split_dims_follow_fairscale(model):
    st = convert.from_aromni(model.state_dict(), "meta", model.cfg)
    a, b = convert.split_meta_shards(st, model.cfg, 2)
    assert a["layers.0.attention.wq.weight"].shape == (32, 64)   # column parallel: output rows
    assert a["layers.0.attention.wo.weight"].shape == (64, 32)   # row parallel: input columns
    assert a["layers.0.feed_forward.w2.weight"].shape == (64, 64)
    assert a["tok_embeddings.weight"].shape == (256, 32)         # ParallelEmbedding splits the embedding dim
    assert a["output.weight"].shape == (128, 64)
    assert torch.equal(a["norm.weight"], b["norm.weight"])


# --- errors ------------------------------------------------------------------------------------------------
def _hf_copy(model, d, edit=None, conf=None):
    export.export_hf(model, str(d), fmt="hf")
    if edit:
        st = load_file(d / "model.safetensors")
        save_file(edit(st), d / "model.safetensors")
    if conf:
        c = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(conf(c)))
    return d


def test_missing_key_named(model, tmp_path):
    d = _hf_copy(model, tmp_path, edit=lambda s: {k: v for k, v in s.items() if "layers.1.mlp.up_proj" not in k})
    with pytest.raises(CheckpointError, match=r"missing keys \['model.layers.1.mlp.up_proj.weight'\]"):
        load_checkpoint(str(d))


def test_unexpected_key_named(model, tmp_path):
    d = _hf_copy(model, tmp_path, edit=lambda s: {**s, "model.layers.0.self_attn.rotary.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected keys.*self_attn.rotary.weight"):
        load_checkpoint(str(d))


def test_wrong_shape_named(model, tmp_path):
    d = _hf_copy(model, tmp_path, conf=lambda c: {**c, "intermediate_size": 96})
    with pytest.raises(CheckpointError, match=r"shape mismatches.*mlp.down_proj.weight: checkpoint \(64, 128\) "
                                              r"vs expected \(64, 96\)"):
        load_checkpoint(str(d))


def test_meta_wrong_shape_named(model, tmp_path):
    d = _meta_dir(model, tmp_path, params_fn=lambda p: {**p, "model": {**p["model"], "n_heads": 8, "n_kv_heads": 4}})
    with pytest.raises(CheckpointError, match="q_normalization.weight: checkpoint \\(16,\\) vs expected \\(8,\\)"):
        load_checkpoint(str(d))


def test_truncated_files(model, tmp_path):
    d = _hf_copy(model, tmp_path / "hf")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(str(d))
    d = _meta_dir(model, tmp_path / "meta")
    f = d / "consolidated.pth"
    f.write_bytes(f.read_bytes()[: f.stat().st_size - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        api.load(str(d), device="cpu")


def test_other_architecture_refused(model, tmp_path):
    d = _hf_copy(model, tmp_path, conf=lambda c: {**c, "model_type": "llama"})
    with pytest.raises(CheckpointError, match="model_type 'llama' is not a Chameleon"):
        load_checkpoint(str(d))


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no weights"):
        load_checkpoint(str(tmp_path))
    with pytest.raises(CheckpointError, match="no such file"):
        api.load(str(tmp_path / "nope"), device="cpu")


class Payload:
    """Unpickling this runs code: it creates ``path`` (through exec, or a shell with os.system)."""

    def __init__(self, path, shell=False):
        self.path, self.shell = str(path), shell

    def __reduce__(self):
        if self.shell:
            return (os.system, (f"touch '{self.path}'",))
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


def test_malicious_pickle_refused(model, tmp_path):
    marker = tmp_path / "payload-ran"
    # the payloads are real: plain unpickling runs them
    for shell in (False, True):
        probe = tmp_path / f"probe-ran-{shell}"
        pickle.loads(pickle.dumps(Payload(probe, shell)))
        assert probe.exists()
    d = _meta_dir(model, tmp_path / "shell", lambda s: {**s, "x": Payload(marker, shell=True)})
    with pytest.raises(CheckpointError, match="refusing to load.*it references [a-z]+.system"):
        load_checkpoint(str(d))
    # Meta consolidated.pth (zip) with a payload next to the weights
    d = _meta_dir(model, tmp_path / "meta", lambda s: {**s, "rope.freqs": Payload(marker)})
    with pytest.raises(CheckpointError, match="refusing to load.*it references exec.*weights-only"):
        api.load(str(d), device="cpu")
    # a legacy (non-zip) pickle as pytorch_model.bin of an HF checkpoint
    h = tmp_path / "hf"
    export.export_hf(model, str(h))
    os.remove(h / "model.safetensors")
    with open(h / "pytorch_model.bin", "wb") as f:
        pickle.dump({"lm_head.weight": torch.zeros(1), "x": Payload(marker)}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(str(h))
    assert not marker.exists()


def test_pytorch_bin_hf_checkpoint(model, tmp_path):
    export.export_hf(model, str(tmp_path))
    st = load_file(tmp_path / "model.safetensors")
    os.remove(tmp_path / "model.safetensors")
    torch.save(st, tmp_path / "pytorch_model.bin")
    assert torch.equal(load_checkpoint(str(tmp_path)).model(IDS), model(IDS))


# --- dtypes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cast_once_to_dtype(layouts, model, dtype):
    m = load_checkpoint(str(layouts / "hf"), dtype=dtype).model
    assert {p.dtype for p in m.parameters()} == {dtype}
    assert (m(IDS) - model(IDS)).abs().max() < 0.05


def test_stored_dtype_kept(tmp_path, model):
    export.export_hf(model, str(tmp_path), dtype=torch.bfloat16)
    m = load_checkpoint(str(tmp_path), dtype=None).model
    assert m.tok_embeddings.weight.dtype == torch.bfloat16


# --- hub ids -----------------------------------------------------------------------------------------------
def _fake_hub(cache, repo, src, rev="0123456789abcdef0123456789abcdef01234567"):
    """A cache laid out like huggingface_hub's: blobs + symlinked snapshot files + refs/main."""
    r = cache / ("models--" + repo.replace("/", "--"))
    (r / "blobs").mkdir(parents=True)
    snap = r / "snapshots" / rev
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(os.listdir(src))):
        blob = r / "blobs" / f"blob{i:04d}"
        blob.write_bytes((src / f).read_bytes())
        os.symlink(os.path.relpath(blob, snap), snap / f)
    (r / "refs").mkdir()
    (r / "refs" / "main").write_text(rev)
    return snap


@pytest.fixture(scope="module")
def arom_model():
    """A 65536-id model (AR-Omni vocabulary), tiny otherwise."""
    cfg = ModelConfig(dim=16, n_layers=1, n_heads=2, vocab_size=65536, intermediate_size=32, max_seq_len=64)
    return build_model(cfg, seed=2, dtype=torch.bfloat16).float()


def test_hub_id_from_local_cache(tmp_path, monkeypatch, arom_model):
    src = tmp_path / "src"
    export.export_hf(arom_model, str(src), dtype=torch.bfloat16)
    cache = tmp_path / "cache"
    snap = _fake_hub(cache, "ModalityDance/AR-Omni-Chat-v0.1", src)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    hub_mod = pytest.importorskip("huggingface_hub")  # the fake cache is what huggingface_hub itself resolves
    assert hub_mod.snapshot_download("ModalityDance/AR-Omni-Chat-v0.1", local_files_only=True,
                                     cache_dir=str(cache)) == str(snap)
    omni = aromni.load("ModalityDance/AR-Omni-Chat-v0.1", device="cpu", dtype="fp32")
    assert omni.family == "ar-omni" and omni.vocab.fingerprint == arom_layout().fingerprint
    assert omni.source == str(snap)
    ids = [0, 16384, 16400, 8197, 4, 8196]
    assert torch.equal(api.logits(omni, ids), arom_model(torch.tensor([ids]))[0])
    pinned = api.load("ModalityDance/AR-Omni-Chat-v0.1@" + snap.name, device="cpu", tokenizers=False)
    assert pinned.source == str(snap)
    with pytest.raises(CheckpointError, match="no such local path, nor in the local Hugging Face cache"):
        api.load("ModalityDance/AR-Omni-Pretrain-v0.1", device="cpu")
    with pytest.raises(CheckpointError, match="revision 'v9' is not in the local"):
        api.load("ModalityDance/AR-Omni-Chat-v0.1@v9", device="cpu")


# --- API ---------------------------------------------------------------------------------------------------
def test_load_bundle_and_logits(layouts, model):
    omni = api.load(str(layouts / "bundle"), device="cpu", dtype="fp32")
    assert omni.family == "aromni" and omni.vocab == tiny_layout()
    out = api.logits(omni, IDS[0].tolist())
    assert out.shape == (11, 256) and torch.equal(out, model(IDS[:1])[0])
    assert torch.equal(api.logits(omni, IDS), model(IDS))
    with pytest.raises(InputError, match=r"must lie in \[0, 256\)"):
        api.logits(omni, [1, 256])
    with pytest.raises(InputError):
        api.logits(omni, torch.zeros(3))
    bf = api.load(str(layouts / "bundle"), device="cpu", dtype="bf16")
    assert bf.model.tok_embeddings.weight.dtype == torch.bfloat16


def test_model_false_loads_no_model(layouts):
    omni = api.load(str(layouts / "bundle"), model=False)
    assert omni.model is None and omni.vocab == tiny_layout()
    with pytest.raises(AromniError, match="model=False"):
        api.logits(omni, [1, 2])


def test_exported_layout_round_trips(tmp_path, model):
    export.export_hf(model, str(tmp_path), layout=tiny_layout(), family="aromni")
    omni = api.load(str(tmp_path), device="cpu", dtype="fp32")
    assert omni.vocab == tiny_layout() and omni.family == "aromni"
    assert torch.equal(api.logits(omni, IDS), model(IDS))


def test_external_vocab_must_fit_the_ar_omni_layout(layouts):
    with pytest.raises(CheckpointError, match="256 token ids but the ar-omni vocabulary layout needs 65536"):
        api.load(str(layouts / "hf-dev"), device="cpu")


def test_default_model_path(monkeypatch, tmp_path, layouts):
    monkeypatch.setattr(api, "DEFAULT_DIR", str(tmp_path / "missing"))
    with pytest.raises(AromniError, match="no bundled default model"):
        api.load(None)
    monkeypatch.setattr(api, "DEFAULT_DIR", str(layouts / "bundle"))
    assert api.default_model_path() == str(layouts / "bundle")
    assert api.load(device="cpu").vocab == tiny_layout()
    assert aromni.load is api.load and "load" in aromni.__all__


def test_tokenizer_files_found_for_external_checkpoints(tmp_path, monkeypatch, arom_model):
    """Routing only: which files reach the tokenizer loaders (the loaders are other modules' business)."""
    seen = {}

    def fake_optional(module, name):
        return lambda *a, **k: seen.setdefault(name, a)

    monkeypatch.setattr(api, "_optional", fake_optional)
    monkeypatch.delenv(api.WAVTOKENIZER_ENV, raising=False)
    root = tmp_path / "ckpt"
    export.export_meta(arom_model, str(root / "models" / "7b"))
    (root / "tokenizer").mkdir()
    for f in ("text_tokenizer.json", "vqgan.yaml", "vqgan.ckpt"):
        (root / "tokenizer" / f).write_text("x")
    (root / "WavTokenizer_small_600_24k_4096.ckpt").write_text("x")
    (root / "wavtokenizer_smalldata_frame40_3s_nq1_code4096_dim512_kmeans200_attn.yaml").write_text("x")
    api.load(str(root), device="cpu")
    assert seen["ChameleonTextTokenizer"] == (str(root / "tokenizer" / "text_tokenizer.json"),)
    assert seen["load_vqgan"] == (str(root / "tokenizer" / "vqgan.yaml"), str(root / "tokenizer" / "vqgan.ckpt"))
    assert seen["load_wavtokenizer"][1] == str(root / "WavTokenizer_small_600_24k_4096.ckpt")
    # $AROMNI_WAVTOKENIZER, then the explicit argument, take precedence
    env_dir = tmp_path / "wt-env"
    env_dir.mkdir()
    (env_dir / "a.yaml").write_text("x")
    (env_dir / "b.ckpt").write_text("x")
    monkeypatch.setenv(api.WAVTOKENIZER_ENV, str(env_dir))
    seen.clear()
    api.load(str(root), device="cpu")
    assert seen["load_wavtokenizer"] == (str(env_dir / "a.yaml"), str(env_dir / "b.ckpt"))
    (env_dir / "c.ckpt").write_text("x")
    with pytest.raises(CheckpointError, match="expected one WavTokenizer .ckpt file, found 2"):
        api.load(str(root), device="cpu")
    # HF layouts hand the model.vqmodel.* encoder weights to the image tokenizer
    seen.clear()
    monkeypatch.delenv(api.WAVTOKENIZER_ENV)
    h = tmp_path / "hf"
    export.export_hf(arom_model, str(h), vqmodel={"quantize.embedding.weight": torch.zeros(8, 4)})
    omni = api.load(str(h), device="cpu")
    assert set(seen["from_hf_vqmodel"][0]) == {"quantize.embedding.weight"}
    assert omni.text is None and "load_wavtokenizer" not in seen


# --- export of a whole Omni --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["hf", "hf-dev", "meta", "aromni"])
def test_export_omni_round_trip(tiny_bundle, tmp_path, fmt):
    omni = api.load(tiny_bundle, device="cpu", dtype="fp32")
    omni.decode = {"t2i": {"image_greedy": True}}
    export.export(omni, str(tmp_path / fmt), fmt=fmt)
    back = api.load(str(tmp_path / fmt), device="cpu", dtype="fp32")
    assert back.vocab == omni.vocab and back.family == omni.family
    if fmt == "aromni":
        assert back.decode == omni.decode
    ids = torch.randint(0, omni.vocab.vocab_size, (1, 9), generator=torch.Generator().manual_seed(1))
    assert torch.equal(api.logits(back, ids), api.logits(omni, ids))
    if fmt != "meta":  # the transformers layouts carry the tokenizers along
        assert type(back.text) is type(omni.text) and back.text.encode("héllo") == omni.text.encode("héllo")
        assert type(back.image) is type(omni.image) and type(back.speech) is type(omni.speech)
        assert torch.equal(back.image.codebook(), omni.image.codebook())
    with pytest.raises(CheckpointError, match="unknown export format"):
        export.export(omni, str(tmp_path / "x"), fmt="gguf")


# --- memory ------------------------------------------------------------------------------------------------
def test_release_pages_keeps_data(tmp_path):
    """Dropping a mapped tensor's pages never changes its values; heap tensors are never touched."""
    from aromni.core.loading import read_safetensors, release_pages

    t = torch.randn(3, 5000)
    save_file({"w": t}, tmp_path / "w.safetensors")
    mapped = read_safetensors(str(tmp_path / "w.safetensors"))["w"]
    assert torch.equal(mapped, t)
    release_pages([mapped])
    assert torch.equal(mapped, t)
    heap = t.clone()
    release_pages([heap])
    assert torch.equal(heap, t)


def test_same_dtype_load_maps_without_copy(layouts):
    """Loading in the stored dtype on CPU assigns the mapped tensors themselves (no copy)."""
    from aromni.core.loading import _file_maps

    m = load_checkpoint(str(layouts / "bundle"), dtype=torch.float32).model
    a = m.layers[0].feed_forward.w2.weight.data_ptr()
    assert any(lo <= a < hi for lo, hi in _file_maps())


def test_libc_is_looked_up_once_not_per_tensor(layouts, monkeypatch):
    """Page release needs libc's madvise: one ``find_library`` per process, however many tensors are cast."""
    import ctypes.util

    from aromni.core import loading

    calls = []
    real = ctypes.util.find_library
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: calls.append(name) or real(name))
    loading._madvise.cache_clear()
    for _ in range(2):
        load_checkpoint(str(layouts / "bundle"), dtype=torch.bfloat16)  # a cast copy of every mapped tensor
    assert len(calls) == 1
