"""WavTokenizer: exact upstream layout, shapes, numerics of the parts, original-checkpoint loading, training."""
from __future__ import annotations

import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aromni.core.bundle import load_tokenizer
from aromni.core.errors import CheckpointError, InputError
from aromni.core.speech_tokenizer import WavTokenizer, build_speech_tokenizer, load_wavtokenizer
from aromni.core.wavtokenizer import (CONFIGS, ISTFT, AttnBlock, SConv1d, SEANetEncoder, WavTokenizerNet, WNConv1d,
                                      to_upstream)

ORIG = CONFIGS["wavtokenizer-24k-40"]


def expected_upstream_keys() -> dict[str, tuple]:
    """The 227 inference keys of WavTokenizer_small_600_24k_4096.ckpt and their shapes, from the spec's table
    (written out independently of the implementation)."""
    keys: dict[str, tuple] = {}
    enc = "feature_extractor.encodec.encoder.model."

    def conv(stem, out, cin, k):
        keys[f"{enc}{stem}.conv.conv.bias"] = (out,)
        keys[f"{enc}{stem}.conv.conv.weight_g"] = (out, 1, 1)
        keys[f"{enc}{stem}.conv.conv.weight_v"] = (out, cin, k)

    conv("0", 32, 1, 7)
    for idx, ch, down_k in ((1, 32, 8), (4, 64, 10), (7, 128, 10), (10, 256, 12)):
        conv(f"{idx}.block.1", ch // 2, ch, 3)
        conv(f"{idx}.block.3", ch, ch // 2, 1)
        conv(f"{idx}.shortcut", ch, ch, 1)
        conv(str(idx + 2), 2 * ch, ch, down_k)
    for layer in (0, 1):
        for w in ("weight_ih", "weight_hh"):
            keys[f"{enc}13.lstm.{w}_l{layer}"] = (2048, 512)
        for b in ("bias_ih", "bias_hh"):
            keys[f"{enc}13.lstm.{b}_l{layer}"] = (2048,)
    conv("15", 512, 512, 7)
    cb = "feature_extractor.encodec.quantizer.vq.layers.0._codebook."
    keys.update({cb + "inited": (1,), cb + "cluster_size": (4096,), cb + "embed": (4096, 512),
                 cb + "embed_avg": (4096, 512)})
    keys["backbone.embed.weight"], keys["backbone.embed.bias"] = (768, 512, 7), (768,)
    keys["backbone.norm.scale.weight"] = keys["backbone.norm.shift.weight"] = (4, 768)
    for i in (0, 1, 3, 4):
        for n in ("norm1", "norm2"):
            keys[f"backbone.pos_net.{i}.{n}.weight"] = keys[f"backbone.pos_net.{i}.{n}.bias"] = (768,)
        for c in ("conv1", "conv2"):
            keys[f"backbone.pos_net.{i}.{c}.weight"], keys[f"backbone.pos_net.{i}.{c}.bias"] = (768, 768, 3), (768,)
    keys["backbone.pos_net.2.norm.weight"] = keys["backbone.pos_net.2.norm.bias"] = (768,)
    for m in ("q", "k", "v", "proj_out"):
        keys[f"backbone.pos_net.2.{m}.weight"], keys[f"backbone.pos_net.2.{m}.bias"] = (768, 768, 1), (768,)
    keys["backbone.pos_net.5.weight"] = keys["backbone.pos_net.5.bias"] = (768,)
    for i in range(12):
        p = f"backbone.convnext.{i}."
        keys.update({p + "gamma": (768,), p + "dwconv.weight": (768, 1, 7), p + "dwconv.bias": (768,),
                     p + "norm.scale.weight": (4, 768), p + "norm.shift.weight": (4, 768),
                     p + "pwconv1.weight": (2304, 768), p + "pwconv1.bias": (2304,),
                     p + "pwconv2.weight": (768, 2304), p + "pwconv2.bias": (768,)})
    keys["backbone.final_layer_norm.weight"] = keys["backbone.final_layer_norm.bias"] = (768,)
    keys.update({"head.out.weight": (2402, 768), "head.out.bias": (2402,), "head.istft.window": (2400,)})
    return keys


def test_original_shape_has_the_exact_upstream_keys():
    with torch.device("meta"):
        net = WavTokenizerNet(ORIG)
    got = {k: tuple(v.shape) for k, v in to_upstream(net.state_dict()).items()}
    want = expected_upstream_keys()
    assert len(want) == 62 + 4 + 158 + 3
    assert got == want
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(net.encoder), count(net.backbone), count(net.head)) == (8_303_104, 61_961_472, 1_847_138)
    assert ORIG.hop == 600 and ORIG.sample_rate // ORIG.hop == 40


def test_original_encoder_frame_count():
    torch.manual_seed(0)
    enc = SEANetEncoder(ORIG).eval()
    with torch.inference_mode():
        for n in (1, 7, 599, 600, 601, 1199, 1201):
            assert enc(torch.randn(1, 1, n) * 0.1).shape == (1, 512, math.ceil(n / 600)), n


# --- parts ----------------------------------------------------------------------------------------
def test_weight_norm_matches_torch_bit_for_bit():
    # the released encoder uses torch.nn.utils.weight_norm; a different operation order (g * v / |v|) is off by
    # an ulp on some weights, which flips codes. Equality here is exact, on many random shapes.
    import warnings

    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    differs_naive = 0
    for cin, cout, k in [(1, 32, 7), (32, 16, 3), (64, 128, 8), (512, 512, 7), (3, 5, 4)]:
        conv = WNConv1d(cin, cout, k)
        with torch.no_grad():
            conv.weight_v.normal_()
            conv.weight_g.copy_(torch.rand_like(conv.weight_g) * 3 + 0.1)
        ours = conv.weight().detach()
        ref = nn.Conv1d(cin, cout, k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the legacy API is what upstream calls
            legacy = torch.nn.utils.weight_norm(ref)
        with torch.no_grad():
            legacy.weight_g.copy_(conv.weight_g)
            legacy.weight_v.copy_(conv.weight_v)
            legacy(torch.zeros(1, cin, k))  # the hook recomputes .weight before each forward
        assert torch.equal(ours, legacy.weight.detach()), (cin, cout, k)
        para = parametrizations.weight_norm(nn.Conv1d(cin, cout, k))
        with torch.no_grad():
            para.parametrizations.weight.original0.copy_(conv.weight_g)
            para.parametrizations.weight.original1.copy_(conv.weight_v)
        assert torch.equal(ours, para.weight.detach()), (cin, cout, k)
        v, g = conv.weight_v.detach(), conv.weight_g.detach()
        differs_naive += int(not torch.equal(ours, g * v / v.norm(dim=(1, 2), keepdim=True)))
    assert differs_naive > 0  # the check can tell operation orders apart on these shapes


def test_sconv_reflect_padding_rule():
    torch.manual_seed(0)
    m = SConv1d(1, 1, 8, stride=4)
    w, b = m.conv.conv.weight(), m.conv.conv.bias
    x = torch.randn(1, 1, 10)
    # pad_total 4 -> (2, 2); the last window needs 2 more on the right
    ref = F.conv1d(F.pad(x, (2, 4), mode="reflect"), w, b, stride=4)
    torch.testing.assert_close(m(x), ref)
    assert m(x).shape[-1] == 3
    # input shorter than the pad: zero-extend, reflect, cut the extension
    k7 = SConv1d(1, 1, 7)
    x1 = torch.tensor([[[2.0]]])
    padded = torch.tensor([[[0, 0, 0, 2.0, 0, 0, 0]]])
    torch.testing.assert_close(k7(x1), F.conv1d(padded, k7.conv.conv.weight(), k7.conv.conv.bias))


def test_istft_same_padding_reconstructs_its_own_stft():
    n_fft, hop, frames = 64, 16, 12
    istft = ISTFT(n_fft, hop)
    x = torch.randn(2, frames * hop, dtype=torch.float64)
    pad = (n_fft - hop) // 2
    xp = F.pad(x, (pad, pad))
    win = torch.hann_window(n_fft, dtype=torch.float64)
    segs = xp.unfold(-1, n_fft, hop) * win  # [B, frames, n_fft]
    spec = torch.fft.rfft(segs, dim=-1).transpose(1, 2)
    istft.window = win
    y = istft(spec)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x)


def test_attention_is_plain_single_head_softmax():
    torch.manual_seed(0)
    blk = AttnBlock(16, 4)
    x = torch.randn(2, 16, 9)
    h = blk.norm(x)
    q, k, v = blk.q(h), blk.k(h), blk.v(h)
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * 16 ** -0.5, dim=-1)
    ref = x + blk.proj_out(torch.einsum("bij,bcj->bci", w, v))
    torch.testing.assert_close(blk(x), ref, rtol=1e-5, atol=1e-5)


def test_codebook_is_l2_nearest_neighbour():
    tok = build_speech_tokenizer("tiny", seed=1)
    z = torch.randn(50, tok.cfg.dim)
    ref = torch.cdist(z, tok.net.quantizer.embed).argmin(1)
    assert torch.equal(tok.net.quantizer.nearest(z), ref)


# --- the tokenizer API ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny() -> WavTokenizer:
    return build_speech_tokenizer("tiny", seed=0)


def test_encode_decode_shapes(tiny):
    rng = np.random.default_rng(0)
    for n in (1, tiny.hop - 1, tiny.hop, tiny.hop + 1, 7 * tiny.hop + 3):
        codes = tiny.encode(rng.standard_normal(n).astype(np.float32) * 0.1)
        assert codes.dtype == torch.int64 and codes.shape == (math.ceil(n / tiny.hop),)
        assert 0 <= int(codes.min()) and int(codes.max()) < tiny.codebook_size
        wav = tiny.decode(codes)
        assert wav.dtype == np.float32 and wav.shape == (len(codes) * tiny.hop,)
        assert tiny.decode(codes, length=n).shape == (n,)
    assert tiny.encode(np.zeros(0, np.float32)).shape == (0,)
    assert tiny.decode([]).shape == (0,)


def test_bad_inputs(tiny):
    with pytest.raises(InputError, match="outside the codebook"):
        tiny.decode([0, tiny.codebook_size])
    with pytest.raises(InputError, match="NaN"):
        tiny.encode(np.array([0.0, np.nan], np.float32))


def test_batch_equals_single(tiny):
    rng = np.random.default_rng(1)
    wavs = rng.standard_normal((3, 2000)).astype(np.float32) * 0.1
    batch = tiny.encode_batch(wavs)
    for i in range(3):
        assert torch.equal(batch[i], tiny.encode(wavs[i]))
    codes = torch.randint(0, tiny.codebook_size, (3, 11))
    out = tiny.decode_batch(codes)
    for i in range(3):
        np.testing.assert_allclose(out[i], tiny.decode(codes[i]), rtol=1e-4, atol=1e-5)


def test_bundle_roundtrip(tiny, tmp_path):
    spec = tiny.save(str(tmp_path))
    assert spec["type"] == "wavtokenizer" and os.path.isfile(tmp_path / spec["file"])
    back = load_tokenizer("speech", spec, str(tmp_path))
    wav = np.sin(np.arange(3000) / 7).astype(np.float32) * 0.3
    assert torch.equal(back.encode(wav), tiny.encode(wav))
    codes = tiny.encode(wav)
    np.testing.assert_array_equal(back.decode(codes), tiny.decode(codes))
    assert (back.sample_rate, back.hop, back.codebook_size) == (tiny.sample_rate, tiny.hop, tiny.codebook_size)


def test_input_level_brings_clips_to_the_codecs_level(tiny, tmp_path):
    from aromni.core.codec_fit import encode_with_error
    from aromni.core.levels import loud_level

    t = np.arange(8000) / tiny.sample_rate
    wav = (0.3 * np.sin(2 * np.pi * 200 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)
    quiet, offset = wav * 0.05, wav + 0.2
    assert not torch.equal(tiny.encode(quiet), tiny.encode(wav))  # no level named: clips are encoded as they are
    tok = WavTokenizer(tiny.net, tiny.preset, input_dbfs=round(loud_level(wav, tiny.sample_rate), 1))
    for x in (quiet, offset):
        assert torch.equal(tok.encode(x), tok.encode(wav))
        assert encode_with_error(tok, x)[0] == encode_with_error(tok, wav)[0]
    assert torch.equal(tok.encode_batch(np.stack([quiet, wav]))[0], tok.encode(wav))
    spec = tok.save(str(tmp_path))
    assert spec["input_dbfs"] == tok.input_dbfs and "input_dbfs" not in tiny.save(str(tmp_path / "plain"))
    back = load_tokenizer("speech", spec, str(tmp_path))
    assert back.input_dbfs == tok.input_dbfs and torch.equal(back.encode(quiet), tok.encode(wav))
    with pytest.raises(CheckpointError, match="input_dbfs"):
        load_tokenizer("speech", {**spec, "input_dbfs": "loud"}, str(tmp_path))


def test_protocol():
    from aromni.core.protocols import SpeechTokenizer
    assert isinstance(build_speech_tokenizer("tiny"), SpeechTokenizer)


# --- original checkpoints -------------------------------------------------------------------------
# Same module layout as the release (n_filters 32, 2-layer LSTM, 32 GroupNorm groups, hop 600, n_fft 2400),
# narrow where the yaml allows it.
SCALED = replace(ORIG, dim=16, codebook_size=32, backbone_dim=32, intermediate_dim=48, num_layers=2)

YAML = """seed_everything: 3407
data:
  class_path: decoder.dataset.VocosDataModule
  init_args:
    train_params: {{sampling_rate: 24000, num_samples: 72000}}
model:
  class_path: decoder.experiment.WavTokenizer
  init_args:
    sample_rate: 24000
    initial_learning_rate: 2e-4
    mel_loss_coeff: 45
    feature_extractor:
      class_path: decoder.feature_extractors.EncodecFeatures
      init_args:
        encodec_model: encodec_24khz
        bandwidths: [6.6, 6.6, 6.6, 6.6]
        train_codebooks: true
        num_quantizers: 1
        dowmsamples: [6, 5, 5, 4]
        vq_bins: {bins}
        vq_kmeans: 200
    backbone:
      class_path: decoder.models.VocosBackbone
      init_args:
        input_channels: {dim}
        dim: {bdim}
        intermediate_dim: {inter}
        num_layers: {layers}
        adanorm_num_embeddings: 4
    head:
      class_path: decoder.heads.ISTFTHead
      init_args:
        dim: {bdim}
        n_fft: 2400
        hop_length: 600
        padding: same
"""


def write_original(tmp_path, inited: float = 1.0, drop: str | None = None, seed: int = 0):
    """A Lightning-style .ckpt in the release's key layout (plus the unused SEANet decoder, discriminator and
    loss-buffer keys, optimizer state) and its yaml. Returns (yaml, ckpt, the network the weights came from)."""
    torch.manual_seed(seed)
    net = WavTokenizerNet(SCALED)
    with torch.no_grad():  # make every tensor matter
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        net.quantizer.embed.normal_()
    net.quantizer.inited.fill_(inited)
    state = to_upstream(net.state_dict())
    dec = "feature_extractor.encodec.decoder.model."
    state[dec + "0.conv.conv.weight_g"] = torch.randn(512, 1, 1)
    state[dec + "0.conv.conv.weight_v"] = torch.randn(512, 512, 7)
    state[dec + "3.convtr.convtr.weight_g"] = torch.randn(512, 1, 1)
    state["multiperioddisc.discriminators.0.convs.0.weight_v"] = torch.randn(32, 1, 5, 1)
    state["dacdiscriminator.discriminator.discriminators.0.convs.0.bias"] = torch.randn(32)
    state["melspec_loss.mel_spec.mel_scale.fb"] = torch.randn(513, 100)
    if drop:
        del state[drop]
    ckpt = {"epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.8.6", "state_dict": state,
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.8, 0.9)}]}],
            "lr_schedulers": [{"last_epoch": 7}], "hyper_parameters": {"sample_rate": 24000, "mel_loss_coeff": 45}}
    ck, ym = tmp_path / "WavTokenizer_small_600_24k_4096.ckpt", tmp_path / "wavtokenizer.yaml"
    torch.save(ckpt, ck)
    ym.write_text(YAML.format(bins=SCALED.codebook_size, dim=SCALED.dim, bdim=SCALED.backbone_dim,
                              inter=SCALED.intermediate_dim, layers=SCALED.num_layers))
    return str(ym), str(ck), net.eval()


def test_load_original_checkpoint(tmp_path):
    ym, ck, net = write_original(tmp_path)
    tok = load_wavtokenizer(ym, ck)
    assert tok.cfg == SCALED and tok.hop == 600 and tok.sample_rate == 24000
    rng = np.random.default_rng(0)
    for n in (1, 599, 601, 3000):
        wav = rng.standard_normal(n).astype(np.float32) * 0.2
        codes = tok.encode(wav)
        assert codes.shape == (math.ceil(n / 600),)
        with torch.inference_mode():
            assert torch.equal(codes, net.encode(torch.from_numpy(wav)[None])[0])
    codes = torch.randint(0, SCALED.codebook_size, (9,))
    with torch.inference_mode():
        ref = net.decode(codes[None])[0].numpy()
    out = tok.decode(codes)
    assert out.shape == (9 * 600,)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_load_original_errors(tmp_path):
    ym, ck, _ = write_original(tmp_path, inited=0.0)
    with pytest.raises(CheckpointError, match="never initialised"):
        load_wavtokenizer(ym, ck)
    ym, ck, _ = write_original(tmp_path, drop="backbone.convnext.1.gamma")
    with pytest.raises(CheckpointError, match="missing keys.*convnext.1.gamma"):
        load_wavtokenizer(ym, ck)
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "obj": np.random.default_rng(0)}, bad)  # not weights-only
    with pytest.raises(CheckpointError, match="weights-only"):
        load_wavtokenizer(ym, str(bad))
    (tmp_path / "x.yaml").write_text("model: {}\n")
    with pytest.raises(CheckpointError, match="not a WavTokenizer config"):
        load_wavtokenizer(str(tmp_path / "x.yaml"), ck)


def test_bundle_spec_with_original_files(tmp_path):
    ym, ck, _ = write_original(tmp_path)
    tok = load_tokenizer("speech", {"type": "wavtokenizer", "yaml": os.path.basename(ym), "ckpt": os.path.basename(ck)},
                         str(tmp_path))
    assert tok.codebook_size == SCALED.codebook_size


def test_resampler_follows_the_codec(tmp_path, tiny):
    # the project's codecs were trained on soxr-resampled audio, the released WavTokenizer on torchaudio's sinc
    assert tiny.resampler == "soxr"
    spec = tiny.save(str(tmp_path / "native"))
    assert spec["resampler"] == "soxr"
    del spec["resampler"]  # bundles written before the field existed keep soxr
    assert load_tokenizer("speech", spec, str(tmp_path / "native")).resampler == "soxr"
    assert load_tokenizer("speech", {**spec, "resampler": "sinc"}, str(tmp_path / "native")).resampler == "sinc"
    with pytest.raises(CheckpointError, match="unknown speech resampler 'linear'"):
        load_tokenizer("speech", {**spec, "resampler": "linear"}, str(tmp_path / "native"))
    ym, ck, _ = write_original(tmp_path)
    orig = load_wavtokenizer(ym, ck)
    assert orig.resampler == "sinc"
    assert orig.save(str(tmp_path / "converted"))["resampler"] == "sinc"  # a converted AR-Omni keeps it
    spec = {"type": "wavtokenizer", "yaml": os.path.basename(ym), "ckpt": os.path.basename(ck)}
    assert load_tokenizer("speech", spec, str(tmp_path)).resampler == "sinc"
    assert load_tokenizer("speech", {**spec, "resampler": "soxr"}, str(tmp_path)).resampler == "soxr"


# --- training -------------------------------------------------------------------------------------
def synthetic_speechlike(sr: int, n: int, seed: int) -> list[np.ndarray]:
    """Vowel-ish clips: harmonic tones with gliding pitch and formant-like amplitude, silences between."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = np.arange(int(sr * rng.uniform(1.0, 2.0))) / sr
        f0 = rng.uniform(90, 220) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        formant = rng.uniform(300, 1500)
        wav = sum(np.sin(h * phase) * np.exp(-((h * f0 - formant) / 500) ** 2) for h in range(1, 12))
        env = (np.sin(2 * np.pi * rng.uniform(1, 3) * t) > -0.3).astype(float)
        out.append((0.3 * wav * env / (np.abs(wav).max() + 1e-9)).astype(np.float32))
    return out


def test_fit_codec_lowers_the_loss():
    from aromni.core.train.codec import SpectralLoss, fit_codec

    tok = build_speech_tokenizer("tiny", seed=0)
    wavs = synthetic_speechlike(tok.sample_rate, 12, seed=0)
    held = torch.from_numpy(np.stack([w[: tok.sample_rate] for w in wavs[:4]]))
    loss = SpectralLoss(tok.sample_rate)

    def recon() -> float:
        with torch.inference_mode():
            codes = tok.net.encode(held)
            return float(sum(loss(tok.net.decode(codes), held)))

    before = recon()
    seen = []
    res = fit_codec(tok, wavs, steps=60, batch_size=4, lr=3e-3, seed=0, on_step=lambda s, r: seen.append(s))
    after = recon()
    assert seen == list(range(1, 61)) and len(res["history"]) == 60
    assert after < 0.8 * before, (before, after)
    assert float(tok.net.quantizer.inited) == 1.0 and not tok.net.training
    assert res["codes_used"] > 4


def test_fit_codec_stream_consistency_term():
    from aromni.core.train.codec import fit_codec, stream_window

    rng = np.random.default_rng(0)
    for _ in range(200):
        s, a, b, e = stream_window(40, rng)
        assert 0 <= s <= a < b <= e <= 40 and b - a >= 4
    tok = build_speech_tokenizer("tiny", seed=0)
    res = fit_codec(tok, synthetic_speechlike(tok.sample_rate, 4, seed=2), steps=4, batch_size=2, lr=1e-3, seed=0,
                    stream_weight=10.0, stream_from=0.5)
    assert [h["stream"] > 0 for h in res["history"]] == [False, False, False, True]  # on after half the steps
    assert all(np.isfinite(h["stream"]) for h in res["history"])
    plain = fit_codec(build_speech_tokenizer("tiny", seed=0), synthetic_speechlike(8000, 4, seed=2), steps=2,
                      batch_size=2, lr=1e-3, seed=0)
    assert all(h["stream"] == 0 for h in plain["history"])


def test_fit_codec_decoder_only_keeps_the_codes():
    from aromni.core.train.codec import fit_codec

    tok = build_speech_tokenizer("tiny", seed=0)
    wavs = synthetic_speechlike(tok.sample_rate, 4, seed=3)
    with pytest.raises(ValueError, match="already trained"):
        fit_codec(tok, wavs, steps=1, batch_size=2, lr=1e-3, seed=0, decoder_only=True)
    fit_codec(tok, wavs, steps=3, batch_size=2, lr=1e-3, seed=0)
    before = {k: v.clone() for k, v in tok.net.state_dict().items()}
    codes = tok.encode(wavs[0])
    fit_codec(tok, wavs, steps=3, batch_size=2, lr=1e-3, seed=0, decoder_only=True, stream_weight=10.0,
              stream_from=0.0)
    after = tok.net.state_dict()
    assert torch.equal(tok.encode(wavs[0]), codes)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quantizer.")))
    assert not torch.equal(before["head.out.weight"], after["head.out.weight"])


def test_fit_codec_is_deterministic():
    from aromni.core.train.codec import fit_codec

    runs = []
    for _ in range(2):
        tok = build_speech_tokenizer("tiny", seed=0)
        wavs = synthetic_speechlike(tok.sample_rate, 4, seed=1)
        res = fit_codec(tok, wavs, steps=3, batch_size=2, lr=1e-3, seed=5)
        runs.append(([h["loss"] for h in res["history"]], tok.net.state_dict()))
    assert runs[0][0] == runs[1][0]
    for k, v in runs[0][1].items():
        assert torch.equal(v, runs[1][1][k]), k


def test_mel_filterbank():
    from aromni.core.train.codec import mel_filterbank

    fb = mel_filterbank(16000, 512, 40)
    assert fb.shape == (40, 257) and (fb >= 0).all() and (fb.max(1).values > 0.5).all()
    peaks = fb.argmax(1)
    assert (peaks[1:] >= peaks[:-1]).all()


def test_autoencode_is_decode_of_encode_when_the_codebook_holds_the_latents():
    tok = build_speech_tokenizer("tiny", seed=0)
    wav = np.random.default_rng(0).standard_normal(tok.hop * 10).astype(np.float32) * 0.1
    out = tok.autoencode(wav)
    assert out.shape == (tok.hop * 10,) and out.dtype == np.float32
    with torch.no_grad():  # a codebook whose first rows are exactly this clip's latents: quantising loses nothing
        z = tok.net.encode_latents(torch.from_numpy(wav)[None])[0].T
        tok.net.quantizer.embed[: len(z)] = z
    np.testing.assert_allclose(tok.decode(tok.encode(wav)), out, atol=1e-5)
    assert tok.autoencode(np.zeros(0, np.float32)).size == 0
    with pytest.raises(InputError):
        tok.autoencode(np.array([0.0, np.nan], np.float32))


@pytest.mark.parametrize("preset,millions", [("small", 5.9), ("medium", 23.8), ("medium-enc", 15.0)])
def test_codec_presets_have_the_documented_sizes(preset, millions):
    tok = build_speech_tokenizer(preset, seed=0)
    assert round(sum(p.numel() for p in tok.net.parameters()) / 1e6, 1) == millions
    assert tok.sample_rate // tok.hop == 40 and tok.codebook_size == 1024
