"""Numerical parity with transformers' ChameleonForConditionalGeneration (the test-only oracle), both ways."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import ChameleonConfig, ChameleonForConditionalGeneration  # noqa: E402

from aromni.core import convert, export  # noqa: E402
from aromni.core.loading import load_checkpoint  # noqa: E402
from aromni.core.model import ModelConfig, build_model  # noqa: E402
from aromni.core.text_tokenizer import image_code_name  # noqa: E402

V = 512
N_IMG = 64  # ids 4..67 named IMGIMG* when image names are on
TINY_VQ = dict(embed_dim=32, num_embeddings=N_IMG, latent_channels=32, resolution=32, base_channels=32,
               channel_multiplier=[1, 1], num_res_blocks=1, attn_resolutions=[])


def vocab_map(image_names: bool) -> dict:
    vm = {f"<tok{i:05d}>": i for i in range(V)}
    if image_names:
        for c in range(N_IMG):
            del vm[f"<tok{c + 4:05d}>"]
            vm[image_code_name(c)] = c + 4
    return vm


def randomise(model: torch.nn.Module, seed: int, std: float = 0.08) -> None:
    """Non-trivial weights everywhere, including distinct per-head qk-norms and RMSNorm gains."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vqmodel" in name:
                continue
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1 or "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def hf_model(swin: bool, image_names: bool = False, seed: int = 0) -> ChameleonForConditionalGeneration:
    c = ChameleonConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        rope_parameters={"rope_type": "default", "rope_theta": 5000.0}, swin_norm=swin,
                        vq_config=TINY_VQ, vocabulary_map=vocab_map(image_names), bos_token_id=0, eos_token_id=2,
                        pad_token_id=1, attn_implementation="eager")
    torch.manual_seed(seed)
    m = ChameleonForConditionalGeneration(c).eval()
    randomise(m, seed)
    return m


def ours_greedy(model, prompt: torch.Tensor, n: int) -> list[int]:
    state = model.setup_cache(1, prompt.shape[1] + n)
    logits = model(prompt, state)[:, -1]
    out = []
    for _ in range(n):
        nxt = logits.argmax(-1, keepdim=True)
        out.append(int(nxt))
        logits = model(nxt, state)[:, -1]
    return out


def hf_greedy(m, prompt: torch.Tensor, n: int) -> list[int]:
    m.generation_config.eos_token_id = None  # run the full n steps
    out = m.generate(prompt, max_new_tokens=n, min_new_tokens=0, do_sample=False, pad_token_id=1)
    return out[0, prompt.shape[1]:].tolist()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("swin", [False, True])
def test_hf_checkpoint_loads_to_same_function(tmp_path, ids, swin):
    m = hf_model(swin)
    m.save_pretrained(tmp_path)
    loaded = load_checkpoint(str(tmp_path))
    assert loaded.format == "hf"
    assert loaded.cfg.swin_norm is swin and loaded.cfg.n_kv_heads == 2
    assert loaded.cfg.qk_norm_per_head  # distinct per-head norms survive
    assert loaded.cfg.rope_theta == 5000.0
    assert set(loaded.extras["vqmodel"]) == {k[len("model.vqmodel."):] for k in m.state_dict() if "vqmodel" in k}
    with torch.no_grad():
        ref = m(ids).logits
        ours = loaded.model(ids)
    assert (ours - ref).abs().max().item() <= 1e-4
    prompt = ids[:1, :8]
    assert ours_greedy(loaded.model, prompt, 32) == hf_greedy(m, prompt, 32)


@pytest.mark.parametrize("swin", [False, True])
def test_export_loads_in_transformers(tmp_path, ids, swin):
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=V, intermediate_size=96,
                      rope_theta=10000.0, swin_norm=swin, max_seq_len=128)
    model = build_model(cfg, seed=3)
    randomise(model, 3)  # shared [head_dim] qk-norms, interleaved RoPE order
    export.export_hf(model, str(tmp_path), vocabulary_map=vocab_map(False), vq_config=TINY_VQ)
    m = ChameleonForConditionalGeneration.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    assert m.model.layers[0].self_attn.q_norm.weight.shape == (4, 16)
    with torch.no_grad():
        ref = m(ids).logits
        ours = model(ids)
    assert (ours - ref).abs().max().item() <= 1e-4
    prompt = ids[1:, :6]
    assert ours_greedy(model, prompt, 32) == hf_greedy(m, prompt, 32)


def test_image_columns_masked_only_by_transformers(tmp_path, ids):
    """transformers forbids IMGIMG ids in forward; aromni does not. All other columns agree."""
    m = hf_model(False, image_names=True, seed=1)
    m.save_pretrained(tmp_path)
    ours_model = load_checkpoint(str(tmp_path)).model
    with torch.no_grad():
        ref = m(ids).logits
        ours = ours_model(ids)
    img = torch.zeros(V, dtype=torch.bool)
    img[4:4 + N_IMG] = True
    assert (ref[..., img] == torch.finfo(ref.dtype).min).all()
    assert torch.isfinite(ours[..., img]).all() and ours[..., img].abs().max() < 1e3
    assert (ours[..., ~img] - ref[..., ~img]).abs().max().item() <= 1e-4


def test_mainline_7b_keys_and_shapes():
    """Mainline 7B: 419 backbone keys (548 with the 129 VQ keys), per-head norms [32, 128]."""
    from aromni.core.model import CONFIGS

    shapes = convert.expected_shapes("hf", CONFIGS["7b"])
    assert len(shapes) == 419
    assert shapes["model.embed_tokens.weight"] == (65536, 4096)
    assert shapes["lm_head.weight"] == (65536, 4096)
    for n in (0, 31):
        p = f"model.layers.{n}."
        assert shapes[p + "self_attn.q_proj.weight"] == (4096, 4096)
        assert shapes[p + "self_attn.q_norm.weight"] == (32, 128)
        assert shapes[p + "self_attn.k_norm.bias"] == (32, 128)
        assert shapes[p + "mlp.gate_proj.weight"] == (11008, 4096)
        assert shapes[p + "mlp.down_proj.weight"] == (4096, 11008)


def test_exported_vq_encoder_matches_transformers(tmp_path):
    """export() stores a VQGAN image tokenizer's encoder as model.vqmodel.*; transformers encodes identically."""
    from aromni.core.bundle import Omni
    from aromni.core.image_tokenizer import build_image_tokenizer
    from aromni.core.vocab import compact_layout
    from aromni.core.vqgan import VQGANConfig

    vq = build_image_tokenizer(VQGANConfig(resolution=32, ch=32, ch_mult=(1, 1), num_res_blocks=1, z_channels=32,
                                           embed_dim=32, n_embed=64, norm_groups=32), seed=4)
    layout = compact_layout(text=300, image=64, audio=100, image_tokens=vq.n_tokens)
    model = build_model(ModelConfig(dim=64, n_layers=1, n_heads=4, vocab_size=layout.vocab_size,
                                    intermediate_size=96, max_seq_len=64), seed=0)
    export.export(Omni(model=model, vocab=layout, image=vq), str(tmp_path))
    m = ChameleonForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    ours = vq.model.state_dict()
    theirs = m.model.vqmodel.state_dict()
    assert {k for k in ours if not k.startswith("decoder.")} == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    px = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        hf_codes = m.model.vqmodel.encode(px).image_tokens.view(2, -1)
    assert torch.equal(vq.encode_pixels(px), hf_codes)
    # transformers maps codes to ids through the exported vocabulary_map: image code c -> layout id
    assert m.model.vocabulary_mapping.convert_img2bpe(hf_codes).tolist() == layout.image_id(hf_codes).tolist()
