"""The Chameleon VQGAN image tokenizer: architecture/key layout, Meta's pre/post-processing, loaders, training."""
from __future__ import annotations

import io
import math
import struct
import sys
import types
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from aromni.core.bundle import load_tokenizer
from aromni.core.errors import AromniError, CheckpointError, InputError
from aromni.core.image_tokenizer import (MAX_PIXELS, MIN_SIDE, VQGANTokenizer, build_image_tokenizer, fit_codes,
                                         from_hf_vqmodel, load_vqgan, open_image, preprocess, probe_image,
                                         resize_crop_box, to_pil, whiten_transparency)
from aromni.core.protocols import ImageTokenizer
from aromni.core.tokens import image_block
from aromni.core.vocab import arom_layout
from aromni.core.vqgan import CONFIGS, VQGANConfig, VQModel

torch.set_num_threads(1)


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def png_header(w: int, h: int) -> bytes:
    """A PNG holding only an IHDR chunk that claims w x h (no pixel data)."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def shapes(n: int, size: int, seed: int) -> list[Image.Image]:
    """Plain-colour discs and squares on plain backgrounds."""
    rng = np.random.default_rng(seed)
    cols = [(220, 30, 30), (30, 160, 50), (40, 70, 230), (240, 210, 20), (255, 255, 255), (0, 0, 0)]
    out = []
    for _ in range(n):
        bg, fg = rng.choice(len(cols), 2, replace=False)
        img = Image.new("RGB", (size, size), cols[bg])
        r = size * rng.uniform(0.2, 0.35)
        cx, cy = rng.uniform(r, size - r, 2)
        box = [cx - r, cy - r, cx + r, cy + r]
        (ImageDraw.Draw(img).ellipse if rng.random() < 0.5 else ImageDraw.Draw(img).rectangle)(box, fill=cols[fg])
        out.append(img)
    return out


# ----------------------------------------------------------------------------------------------
# Architecture and key layout
# ----------------------------------------------------------------------------------------------
def test_chameleon_preset_matches_the_reference_layout():
    cfg = CONFIGS["chameleon"]
    assert (cfg.resolution, cfg.grid, cfg.n_tokens, cfg.n_embed, cfg.embed_dim) == (512, 32, 1024, 8192, 256)
    with torch.device("meta"):
        sd = VQModel(cfg).state_dict()
    groups = {p: [k for k in sd if k.startswith(p + ".")] for p in
              ("encoder", "decoder", "quantize", "quant_conv", "post_quant_conv")}
    assert {p: len(v) for p, v in groups.items()} == {"encoder": 124, "decoder": 164, "quantize": 1,
                                                      "quant_conv": 2, "post_quant_conv": 2}
    numel = {p: sum(sd[k].numel() for k in v) for p, v in groups.items()}
    assert numel == {"encoder": 27_194_880, "decoder": 39_294_851, "quantize": 2_097_152, "quant_conv": 65_792,
                     "post_quant_conv": 65_792}
    shapes_ = {
        "encoder.conv_in.weight": (128, 3, 3, 3), "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.4.block.0.nin_shortcut.weight": (512, 256, 1, 1),
        "encoder.down.3.downsample.conv.weight": (256, 256, 3, 3), "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1), "encoder.norm_out.weight": (512,),
        "encoder.conv_out.weight": (256, 512, 3, 3), "quantize.embedding.weight": (8192, 256),
        "quant_conv.weight": (256, 256, 1, 1), "post_quant_conv.weight": (256, 256, 1, 1),
        "decoder.conv_in.weight": (512, 256, 3, 3), "decoder.up.1.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.up.3.block.0.nin_shortcut.weight": (256, 512, 1, 1), "decoder.up.0.block.2.conv2.weight":
        (128, 128, 3, 3), "decoder.up.4.upsample.conv.weight": (512, 512, 3, 3), "decoder.norm_out.weight": (128,),
        "decoder.conv_out.weight": (3, 128, 3, 3)}
    assert {k: tuple(sd[k].shape) for k in shapes_} == shapes_
    assert not any(".attn.0." in k for k in sd)  # attn_resolutions [] : attention only in the mid blocks
    assert "decoder.up.0.upsample.conv.weight" not in sd and "encoder.down.4.downsample.conv.weight" not in sd


@pytest.mark.parametrize("name", ["small", "tiny"])
def test_small_presets_shapes(name):
    tok = build_image_tokenizer(name)
    assert isinstance(tok, ImageTokenizer)
    x = torch.rand(3, 3, tok.resolution, tok.resolution) * 2 - 1
    codes = tok.encode_pixels(x)
    assert codes.shape == (3, tok.n_tokens) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < tok.codebook_size
    assert tok.decode_pixels(codes).shape == x.shape
    assert tok.codebook().shape == (tok.codebook_size, tok.embed_dim)


def test_attention_levels_and_config_validation():
    cfg = VQGANConfig(resolution=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), z_channels=8,
                      embed_dim=8, n_embed=16, norm_groups=4)
    sd = VQModel(cfg).state_dict()
    # attention after each block at the 8x8 level only: encoder level 1, decoder level 1 (2 blocks)
    assert "encoder.down.1.attn.0.q.weight" in sd and "encoder.down.0.attn.0.q.weight" not in sd
    assert "decoder.up.1.attn.1.k.weight" in sd and "decoder.up.0.attn.0.k.weight" not in sd
    with pytest.raises(ValueError, match="divisible"):
        VQGANConfig(resolution=20, ch_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="norm_groups"):
        VQGANConfig(ch=12, norm_groups=8)


def test_quantizer_is_plain_l2_argmin_with_lowest_index_ties():
    tok = build_image_tokenizer("tiny")
    q = tok.model.quantize
    z = torch.randn(500, q.embedding.weight.shape[1])
    ref = torch.cdist(z.double(), q.embedding.weight.double()).argmin(1)
    assert torch.equal(q.nearest(z, chunk=64), ref)
    with torch.no_grad():
        q.embedding.weight[5] = q.embedding.weight[9] = torch.full((8,), 3.0)
    hit = q.nearest(torch.full((2, 8), 3.0))
    assert hit.tolist() == [5, 5]  # duplicate rows: the lower index wins


def test_codes_are_row_major_and_batching_does_not_change_them():
    tok = build_image_tokenizer("tiny", seed=1)
    imgs = shapes(5, 40, seed=0)
    tok.batch_size = 2
    batched = tok.encode(imgs)
    single = torch.cat([tok.encode([im]) for im in imgs])
    assert torch.equal(batched, single)
    # row-major raster order: code k is latent (row k // g, column k % g)
    x = tok.preprocess(imgs[:1])
    z = tok.model.encode_latents(x).detach()
    g = tok.grid
    k = g + 2  # row 1, column 2
    assert int(tok.model.quantize.nearest(z[0, :, 1, 2][None])[0]) == int(batched[0, k])


def test_build_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_image_tokenizer("tiny", seed=3)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = build_image_tokenizer("tiny", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


# ----------------------------------------------------------------------------------------------
# Preprocessing and post-processing
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("w,h,r,expect", [
    (33, 32, 16, (16, 16, 0, 0)),  # 16.5 -> 16: Python's round (half to even), as the reference
    (35, 32, 16, (18, 16, 1, 0)),  # 17.5 -> 18
    (105, 100, 16, (17, 16, 0, 0)),  # 16.8 rounds up (transformers' int() would give 16)
    (1000, 300, 64, (213, 64, 74, 0)),
    (300, 1000, 64, (64, 213, 0, 74)),
    (640, 480, 512, (683, 512, 85, 0)),  # 682.67 -> 683, crop (683-512)//2
    (512, 512, 512, (512, 512, 0, 0)),
    (20, 10, 512, (1024, 512, 256, 0)),  # upscaling
])
def test_resize_crop_numbers(w, h, r, expect):
    assert resize_crop_box(w, h, r) == expect


def test_whiten_transparency_pinned_values():
    px = np.array([[[0, 0, 0, 128], [10, 200, 30, 1], [255, 255, 255, 0], [100, 50, 25, 254]]], np.uint8)
    out = np.asarray(whiten_transparency(Image.fromarray(px, "RGBA")))
    # (1 - a) * 255 + a * rgb, truncated: 127.0, 254.04/254.78/254.12, 255, 100.6/50.8/25.9
    assert out.tolist() == [[[127, 127, 127], [254, 254, 254], [255, 255, 255], [100, 50, 25]]]
    opaque = Image.fromarray(np.dstack([px[..., :3], np.full((1, 4), 255, np.uint8)]), "RGBA")
    assert np.asarray(whiten_transparency(opaque)).tolist() == px[..., :3].tolist()
    rgb = Image.new("RGB", (2, 2), (1, 2, 3))
    assert whiten_transparency(rgb) is rgb
    assert np.asarray(whiten_transparency(Image.new("L", (2, 2), 77))).tolist() == [[[77] * 3] * 2] * 2
    # 16-bit grey (as a 16-bit PNG opens) is scaled to 8 bits, not clipped to white; 32-bit "I" holding 8-bit values
    # is kept
    grey16 = np.array([[0, 257 * 77], [40000, 65535]], dtype=np.uint16)
    for img in (Image.fromarray(grey16), Image.fromarray(grey16.astype(np.int32), "I")):
        assert np.asarray(whiten_transparency(img))[..., 0].tolist() == [[0, 77], [156, 255]], img.mode
    assert np.asarray(whiten_transparency(Image.fromarray(np.full((1, 1), 77, np.int32), "I"))).tolist() == [[[77] * 3]]
    la = Image.new("LA", (1, 1), (100, 0))  # fully transparent grey -> white
    assert np.asarray(whiten_transparency(la)).tolist() == [[[255, 255, 255]]]


def test_preprocess_matches_the_recipe():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    x = preprocess(img, 16)
    assert x.dtype == np.float32 and x.shape == (3, 16, 16)
    # by hand: short side 30 -> 16, width round(41 * 16 / 30) = round(21.87) = 22, x0 = 3
    ref = img.resize((22, 16), Image.LANCZOS).crop((3, 0, 19, 16))
    want = (np.asarray(ref, np.float64) / 255.0 * 2 - 1).astype(np.float32).transpose(2, 0, 1)
    assert np.array_equal(x, want)
    flat = preprocess(Image.new("RGB", (16, 16), (255, 0, 128)), 16)
    assert flat[0, 0, 0] == 1.0 and flat[1, 0, 0] == -1.0 and flat[2, 0, 0] == np.float32(128 / 255 * 2 - 1)


def test_to_pil_clamps_and_truncates():
    vals = torch.tensor([-1.0, 1.0, 0.0, 0.999, -2.0, 2.0, -0.999, 0.5])
    x = vals.view(1, 1, 8).expand(3, 1, 8)
    img = to_pil(x)
    assert img.mode == "RGB" and img.size == (8, 1)
    # (v + 1) / 2 * 255, then astype(uint8): 0, 255, 127 (127.5), 254 (254.87), 0, 255, 0 (0.1275), 191 (191.25)
    assert np.asarray(img)[0, :, 0].tolist() == [0, 255, 127, 254, 0, 255, 0, 191]


def test_fit_codes_pads_with_the_first_code_and_truncates():
    assert fit_codes([7, 1, 2], 6).tolist() == [7, 1, 2, 7, 7, 7]
    assert fit_codes(torch.arange(10), 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(InputError, match="no codes"):
        fit_codes([], 4)
    tok = build_image_tokenizer("tiny")
    imgs = tok.decode([[3, 4]])  # one short flat sequence
    assert len(imgs) == 1 and imgs[0].size == (16, 16)
    with pytest.raises(InputError, match="outside the codebook"):
        tok.decode(torch.full((1, 16), 64))


def test_code_to_id_maps():
    v = arom_layout()
    assert v.image_id(0) == 4 and v.image_id(8191) == 8195 and v.image_code(8195) == 8191
    assert v.image_id(torch.tensor([0, 53])).tolist() == [4, 57]
    assert (v.boi, v.eoi) == (8197, 8196)
    block = image_block([0, 53, 8191], v)
    assert block == [8197, 4, 57, 8195, 8196]
    assert all(v.is_image(t) for t in block[1:-1]) and not v.is_image(8196)


# ----------------------------------------------------------------------------------------------
# open_image: bad inputs
# ----------------------------------------------------------------------------------------------
def test_open_image_accepts_paths_and_bytes(tmp_path):
    img = Image.new("RGBA", (20, 12), (1, 2, 3, 100))
    p = tmp_path / "a.png"
    img.save(p)
    a, b = open_image(str(p)), open_image(p.read_bytes(), "x.png")
    assert a.size == b.size == (20, 12) and a.mode == "RGBA"
    assert probe_image(str(p)) == (20, 12)


def rotated_jpeg(w: int = 48, h: int = 24) -> bytes:
    """A JPEG whose EXIF orientation says "rotate 90 degrees clockwise on display" (a phone held sideways)."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 3] = (200, 10, 10)
    arr[: h // 2, w // 3:] = (10, 200, 10)
    arr[h // 2:, w // 3:] = (10, 10, 200)
    exif = Image.Exif()
    exif[0x0112] = 6
    return png_bytes(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95)


def test_open_image_keeps_stored_pixels_unless_exif_transpose():
    data = rotated_jpeg()
    stored = Image.open(io.BytesIO(data))
    assert stored.size == (48, 24)
    as_meta = open_image(data)  # Meta's Chameleon reads the pixels as stored
    assert as_meta.size == (48, 24) and np.array_equal(np.asarray(as_meta), np.asarray(stored.convert("RGB")))
    upright = open_image(data, exif_transpose=True)
    assert upright.size == (24, 48)
    assert np.array_equal(np.asarray(upright), np.asarray(stored.convert("RGB").transpose(Image.Transpose.ROTATE_270)))


def test_rotated_jpeg_codes_follow_the_stored_pixels():
    tok = build_image_tokenizer("tiny", seed=0)
    data = rotated_jpeg(64, 40)
    plain = Image.open(io.BytesIO(data)).convert("RGB")  # decoded pixels, EXIF not applied
    ref = tok.encode([plain])
    assert torch.equal(tok.encode([open_image(data)]), ref)
    assert not torch.equal(tok.encode([open_image(data, exif_transpose=True)]), ref)


@pytest.mark.parametrize("case,match", [
    ("text", "not an image file"),
    ("empty", "empty"),
    ("truncated", "truncated or corrupt"),
    ("one_pixel", f"1x1 pixels, too small: the minimum is {MIN_SIDE}x{MIN_SIDE}"),
    ("bomb", "decompression bomb"),
    ("bomb_soft", "decompression bomb"),
])
def test_open_image_errors(case, match):
    full = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    data = {"text": b"hello, not an image\n", "empty": b"", "truncated": full[: len(full) // 2],
            "one_pixel": png_bytes(Image.new("RGB", (1, 1))),
            "bomb": png_header(30000, 30000),  # 900 MP: PIL's own guard fires
            "bomb_soft": png_header(11000, 10000)}[case]  # 110 MP: under PIL's hard limit, over ours
    with pytest.raises(InputError, match=match) as e:
        open_image(data, "in.png")
    assert str(e.value).startswith("in.png: ") and "\n" not in str(e.value)
    if case.startswith("bomb"):
        assert f"{MAX_PIXELS // 1_000_000} megapixels" in str(e.value)


def test_open_image_file_errors(tmp_path, monkeypatch):
    import builtins

    with pytest.raises(InputError, match="no such file"):
        open_image(str(tmp_path / "missing.png"))
    with pytest.raises(InputError, match="is a directory"):
        open_image(str(tmp_path))
    p = tmp_path / "locked.png"
    p.write_bytes(png_bytes(Image.new("RGB", (16, 16))))
    real_open = builtins.open

    def deny(file, *a, **k):  # chmod 000 does not stop root, so refuse the open itself
        if str(file) == str(p):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)
    monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(InputError, match=r"locked.png: cannot read \(Permission denied\)"):
        open_image(str(p))


# ----------------------------------------------------------------------------------------------
# Bundles and upstream checkpoint layouts
# ----------------------------------------------------------------------------------------------
def test_bundle_roundtrip(tmp_path):
    tok = build_image_tokenizer("tiny", seed=2)
    spec = tok.save(str(tmp_path))
    assert spec["type"] == "vqgan" and (tmp_path / spec["weights"]).is_file()
    back = load_tokenizer("image", spec, str(tmp_path))
    assert isinstance(back, VQGANTokenizer) and back.cfg == tok.cfg
    imgs = shapes(3, 24, seed=1)
    assert torch.equal(back.encode(imgs), tok.encode(imgs))
    assert [np.asarray(i).tolist() for i in back.decode(tok.encode(imgs))] == \
        [np.asarray(i).tolist() for i in tok.decode(tok.encode(imgs))]


# taming's GroupNorm always has 32 groups, so upstream-layout files need channels that are multiples of 32
TAMING_DD = dict(double_z=False, z_channels=32, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                 num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
TAMING_CFG = VQGANConfig(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), z_channels=32,
                         embed_dim=16, n_embed=64)


def write_taming_yaml(path, dd=TAMING_DD, n_embed=64, embed_dim=16):
    import yaml

    doc = {"model": {"target": "taming.models.vqgan.VQModel", "base_learning_rate": 4.5e-06, "params": {
        "embed_dim": embed_dim, "n_embed": n_embed, "ddconfig": dd,
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                       "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 0,
                                  "disc_weight": 0.75, "codebook_weight": 1.0}}}}}
    path.write_text(yaml.safe_dump(doc))


@pytest.fixture
def lightning_ckpt(tmp_path, monkeypatch):
    """A Lightning-style vqgan.ckpt for the tiny config: state_dict nesting, loss keys, and pickled objects
    of a module that is gone at load time (as Lightning callbacks are without Lightning installed)."""
    src = build_image_tokenizer(TAMING_CFG, seed=7)
    fake = types.ModuleType("fake_lightning")

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_path, self.monitor = "/ckpt/last.ckpt", "val/rec_loss"
    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = "fake_lightning", "ModelCheckpoint"
    fake.ModelCheckpoint = ModelCheckpoint
    monkeypatch.setitem(sys.modules, "fake_lightning", fake)
    state = dict(src.model.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)
    state["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(4, 3, 3, 3)
    ckpt = {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.0.8", "state_dict": state,
            "callbacks": {ModelCheckpoint: ModelCheckpoint()}, "optimizer_states": [{"state": {}, "param_groups": []}],
            "lr_schedulers": []}
    path = tmp_path / "vqgan.ckpt"
    torch.save(ckpt, path)
    monkeypatch.delitem(sys.modules, "fake_lightning")
    yml = tmp_path / "vqgan.yaml"
    write_taming_yaml(yml)
    return src, str(yml), str(path)


def test_load_vqgan_lightning_checkpoint(lightning_ckpt):
    src, yml, ckpt = lightning_ckpt
    with pytest.raises(Exception):  # noqa: B017 - plain weights-only loading refuses the pickled callback
        torch.load(ckpt, weights_only=True)
    tok = load_vqgan(yml, ckpt)
    assert tok.cfg == src.cfg and tok.has_decoder
    assert "decoder.up.1.attn.1.proj_out.weight" in src.model.state_dict()
    ours = tok.model.state_dict()
    assert set(ours) == set(src.model.state_dict())
    assert all(torch.equal(ours[k], v) for k, v in src.model.state_dict().items())
    imgs = shapes(2, 30, seed=3)
    codes = tok.encode(imgs)
    assert torch.equal(codes, src.encode(imgs))
    assert torch.equal(tok.decode_pixels(codes), src.decode_pixels(codes))


def test_load_vqgan_plain_and_legacy_files(tmp_path):
    src = build_image_tokenizer(TAMING_CFG, seed=8)
    yml = tmp_path / "vqgan.yaml"
    write_taming_yaml(yml)
    for name, kw in (("new.ckpt", {}), ("legacy.ckpt", {"_use_new_zipfile_serialization": False})):
        torch.save({"state_dict": src.model.state_dict()}, tmp_path / name, **kw)
        tok = load_vqgan(str(yml), str(tmp_path / name))
        assert torch.equal(tok.codebook(), src.codebook())


def test_load_vqgan_errors(tmp_path):
    src = build_image_tokenizer(TAMING_CFG, seed=8)
    yml = tmp_path / "vqgan.yaml"
    write_taming_yaml(yml)
    sd = src.model.state_dict()
    torch.save({"state_dict": {k: v for k, v in sd.items() if k != "encoder.conv_in.bias"}}, tmp_path / "m.ckpt")
    with pytest.raises(CheckpointError, match=r"missing \['encoder.conv_in.bias'\]"):
        load_vqgan(str(yml), str(tmp_path / "m.ckpt"))
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith("decoder.")}}, tmp_path / "e.ckpt")
    with pytest.raises(CheckpointError, match="no decoder"):
        load_vqgan(str(yml), str(tmp_path / "e.ckpt"))
    torch.save({"state_dict": sd}, tmp_path / "ok.ckpt")
    write_taming_yaml(yml, n_embed=128)
    with pytest.raises(CheckpointError, match="shape mismatch.*quantize.embedding.weight"):
        load_vqgan(str(yml), str(tmp_path / "ok.ckpt"))
    (tmp_path / "bad.yaml").write_text("model: {params: {foo: 1}}\n")
    with pytest.raises(CheckpointError, match="not a taming VQGAN config"):
        load_vqgan(str(tmp_path / "bad.yaml"), str(tmp_path / "ok.ckpt"))
    write_taming_yaml(yml)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable torch checkpoint"):
        load_vqgan(str(yml), str(tmp_path / "junk.ckpt"))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_vqgan(str(yml), str(tmp_path / "none.ckpt"))


@pytest.mark.parametrize("prefix", ["model.vqmodel.", ""])
def test_from_hf_vqmodel_encoder_only(prefix):
    # transformers hard-codes 32 GroupNorm groups; this small config keeps them
    cfg = VQGANConfig(resolution=32, ch=32, ch_mult=(1, 2), num_res_blocks=2, z_channels=32, embed_dim=32,
                      n_embed=64)
    src = build_image_tokenizer(cfg, seed=5)
    state = {prefix + k: v for k, v in src.model.state_dict().items() if "decoder" not in k}
    if prefix:  # a whole checkpoint: the backbone's keys ride along
        state["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(4, 4)
        state["lm_head.weight"] = torch.zeros(4, 4)
    tok = from_hf_vqmodel(state, resolution=32)
    assert tok.cfg == cfg and not tok.has_decoder
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(tok.encode_pixels(x), src.encode_pixels(x))
    with pytest.raises(AromniError, match="original .*vqgan.ckpt"):
        tok.decode(torch.zeros(1, tok.n_tokens, dtype=torch.long))


def test_hf_mainline_key_count_for_chameleon():
    with torch.device("meta"):
        sd = VQModel(CONFIGS["chameleon"], decoder=False).state_dict()
    assert len(sd) == 129  # the model.vqmodel.* keys of a transformers Chameleon checkpoint
    tok = from_hf_vqmodel({"model.vqmodel." + k: torch.empty(v.shape) for k, v in sd.items()}, device="cpu")
    assert tok.cfg == CONFIGS["chameleon"] and tok.n_tokens == 1024


@pytest.mark.parametrize("attn", [[], [16]])
def test_encoder_matches_transformers(attn):
    """transformers' ChameleonVQVAE (encoder + quantizer) on the same weights gives the same codes."""
    pytest.importorskip("transformers")
    from transformers.models.chameleon.configuration_chameleon import ChameleonVQVAEConfig
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE

    hc = ChameleonVQVAEConfig(embed_dim=32, num_embeddings=64, latent_channels=32, resolution=32, base_channels=32,
                              channel_multiplier=[1, 2], num_res_blocks=2, attn_resolutions=attn)
    torch.manual_seed(0)
    hf = ChameleonVQVAE(hc).eval()
    with torch.no_grad():
        for p in hf.parameters():  # transformers' init leaves some tensors at zero; make every path count
            p.copy_(torch.randn_like(p) * 0.1)
    tok = from_hf_vqmodel({"model.vqmodel." + k: v for k, v in hf.state_dict().items()}, resolution=32)
    assert tok.cfg.attn_resolutions == tuple(attn)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        theirs = hf.encode(x).image_tokens.view(3, -1)
    assert torch.equal(tok.encode_pixels(x), theirs)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def _fit(seed=0, steps=40, ema=True):
    from aromni.core.train.image_vq import fit_image_vq

    tok = build_image_tokenizer("tiny", seed=0)
    hist = []
    res = fit_image_vq(tok, shapes(24, 32, seed=0), steps=steps, batch_size=8, lr=3e-3, seed=seed,
                       on_step=lambda s, m: hist.append(m), ema=ema)
    return tok, res, hist


def test_fit_image_vq_learns_and_uses_the_codebook():
    tok, res, hist = _fit()
    assert len(hist) == 40 and [h["step"] for h in hist] == list(range(1, 41))
    # the first 30% of steps train the plain autoencoder, then the codebook starts from k-means
    assert [h["quantized"] for h in hist[:12]] == [0] * 12 and all(h["quantized"] for h in hist[12:])
    assert all(h["usage"] == 0 for h in hist[:12]) and hist[12]["usage"] > 1
    first = np.mean([h["recon"] for h in hist[:5]])
    last = np.mean([h["recon"] for h in hist[-5:]])
    assert last < 0.9 * first, (first, last)
    assert res["codes_used"] > 1 and res["perplexity"] > 1
    assert math.isfinite(res["psnr"]) and res["steps"] == 40
    assert not tok.model.training


def test_fit_image_vq_is_deterministic_and_straight_through_works():
    a, ra, _ = _fit(seed=4, steps=12)
    b, rb, _ = _fit(seed=4, steps=12)
    assert ra["loss"] == rb["loss"] and ra["mse"] == rb["mse"]
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    _, rc, _ = _fit(seed=5, steps=12)
    assert rc["loss"] != ra["loss"]
    st, rs, hist = _fit(steps=30, ema=False)
    assert hist[-1]["codebook"] > 0 and rs["codes_used"] > 1
    assert np.mean([h["recon"] for h in hist[-5:]]) < np.mean([h["recon"] for h in hist[:5]])


def test_kmeans_finds_separated_clusters():
    from aromni.core.train.image_vq import _kmeans

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    z = torch.cat([c + 0.1 * torch.randn(200, 2, generator=g) for c in centres])
    found = _kmeans(z, 3, iters=10, g=torch.Generator().manual_seed(1))
    assert torch.cdist(centres, found).min(1).values.max() < 0.1


def test_foreground_weights_up_weight_pixels_unlike_the_border():
    from aromni.core.train.image_vq import _foreground_weights

    x = torch.full((2, 3, 16, 16), -1.0)  # black backgrounds
    x[0, :, 4:8, 4:8] = torch.tensor([0.8, -0.7, -0.7])[:, None, None]  # a red 4x4 square in image 0
    w = _foreground_weights(x, 10.0)
    assert w.shape == (2, 1, 16, 16)
    assert torch.allclose(w.mean((2, 3)), torch.ones(2, 1))
    assert torch.allclose(w[0, 0, 4, 4] / w[0, 0, 0, 0], torch.tensor(11.0))
    assert torch.allclose(w[1], torch.ones(1, 16, 16))  # nothing but background: plain weights


def test_fit_image_vq_with_foreground_weight_and_unknown_option_is_a_config_error(tmp_path):
    from aromni.core.errors import AromniError
    from aromni.core.train.config import TrainConfig
    from aromni.core.train.image_vq import fit_image_vq
    from aromni.core.train.stages import _fit_options

    tok = build_image_tokenizer("tiny", seed=0)
    res = fit_image_vq(tok, shapes(16, 32, seed=0), steps=6, batch_size=8, lr=3e-3, fg_weight=10.0)
    assert np.isfinite(res["loss"])
    cfg = TrainConfig(kind="image_vq")
    cfg.tokenizer.options = {"fg_weight": 10.0}
    assert _fit_options(cfg, fit_image_vq) == {"fg_weight": 10.0}
    cfg.tokenizer.options = {"fg_wieght": 10.0}
    with pytest.raises(AromniError, match="unknown fg_wieght"):
        _fit_options(cfg, fit_image_vq)


def test_cli_unknown_tokenizer_option_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "vq.yaml"
    cfg.write_text("kind: image_vq\nout_dir: out\ndata: {train: [{type: manifest, path: missing.jsonl}]}\n"
                   "tokenizer: {preset: tiny, options: {fg_wieght: 10}}\n")
    r = subprocess.run([sys.executable, "-m", "aromni", "train", str(cfg), "-q"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "tokenizer.options: unknown fg_wieght" in r.stderr and "fg_weight" in r.stderr


def test_background_code_entropy_tells_local_codes_from_global_ones():
    """A tokenizer whose code is the cell's own mean colour gives empty background 0 bits; one whose codes also
    depend on the rest of the image does not."""
    from aromni.core.corpus import scenes
    from aromni.core.train.image_vq import background_code_entropy

    class Local:
        resolution = 32

        def encode(self, images):
            out = []
            for im in images:
                a = np.asarray(im.convert("RGB").resize((32, 32))).astype(int).reshape(8, 4, 8, 4, 3).mean((1, 3))
                out.append(torch.tensor((a // 32 * [64, 8, 1]).sum(-1).reshape(-1)))
            return out

    class Global(Local):
        def encode(self, images):  # every code shifted by a whole-image statistic
            return [c + int(np.asarray(im).mean()) for c, im in zip(super().encode(images), images)]

    rng = np.random.default_rng(0)
    attrs = [scenes.sample_scene(rng, two_prob=0.0) for _ in range(40)]
    local = background_code_entropy(Local(), attrs)
    assert local["cells"] > 40 * 30 and local["bits_per_cell"] == 0 and local["modal_share"] == 1
    glob = background_code_entropy(Global(), attrs)
    assert glob["cells"] == local["cells"] and glob["bits_per_cell"] > 2 and glob["modal_share"] < 0.5


def test_cli_tokenize_image_exif_transpose_flag(tmp_path):
    import os
    import subprocess

    data = rotated_jpeg(64, 40)
    jpg = tmp_path / "rot.jpg"
    jpg.write_bytes(data)
    stored = Image.open(io.BytesIO(data)).convert("RGB")
    stored.save(tmp_path / "stored.png")
    stored.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.png")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("AROMNI_MODEL", None)

    def codes(*args):
        r = subprocess.run([sys.executable, "-m", "aromni", "tokenize-image", "--codes", *args],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        return [line for line in r.stdout.splitlines() if line and not line.startswith("#")]

    plain, turned = codes(str(jpg), str(tmp_path / "stored.png")), \
        codes("--exif-transpose", str(jpg), str(tmp_path / "upright.png"))
    assert plain[0] == plain[1] and turned[0] == turned[1] and plain[0] != turned[0]


# ----------------------------------------------------------------------------------------------
# Decoding: the latent grid is contiguous, as in Meta's code
# ----------------------------------------------------------------------------------------------
def test_embed_codes_is_contiguous_and_decode_uses_it():
    tok = build_image_tokenizer("tiny", seed=3)
    codes = torch.randint(0, tok.codebook_size, (2, tok.n_tokens), generator=torch.Generator().manual_seed(0))
    zq = tok.model.embed_codes(codes)
    g = tok.grid
    assert zq.is_contiguous() and zq.shape == (2, tok.embed_dim, g, g)
    # Meta's order: embedding rows -> [B, g, g, D] -> channels first, made contiguous
    ref = tok.model.quantize.embedding.weight[codes].view(2, g, g, -1).permute(0, 3, 1, 2).contiguous()
    assert torch.equal(zq, ref)
    with torch.inference_mode():
        assert torch.equal(tok.model.decode(codes), tok.model.decoder(tok.model.post_quant_conv(ref)))
