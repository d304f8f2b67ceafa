"""WavTokenizer network (EnCodec SEANet encoder, one EMA codebook, Vocos backbone, ISTFT head).

Written from a description of the design (docs/formats.md, "Speech tokenizer"); module and parameter names
mirror the released checkpoint so that loading is a prefix rename (see ``UPSTREAM_PREFIXES``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WavTokenizerConfig:
    sample_rate: int = 24000
    ratios: tuple[int, ...] = (6, 5, 5, 4)  # the yaml's `dowmsamples`; the encoder applies them reversed
    n_filters: int = 32
    lstm_layers: int = 2
    dim: int = 512  # encoder output = codebook vector size = backbone input
    codebook_size: int = 4096
    backbone_dim: int = 768
    intermediate_dim: int = 2304
    num_layers: int = 12
    adanorm_embeddings: int = 4  # rows of the AdaLayerNorm tables (bandwidth ids); row 0 is always used
    groups: int = 32  # GroupNorm groups in pos_net
    n_fft: int = 2400

    @property
    def hop(self) -> int:
        return math.prod(self.ratios)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratios"] = list(self.ratios)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WavTokenizerConfig":
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        if "ratios" in d:
            d["ratios"] = tuple(int(r) for r in d["ratios"])
        return cls(**d)


CONFIGS: dict[str, WavTokenizerConfig] = {
    # WavTokenizer-small-600-24k-4096 as used by AR-Omni: 24 kHz, 40 codes/s, 4096 codes.
    "wavtokenizer-24k-40": WavTokenizerConfig(),
    # The bundled default codec: 16 kHz, still 40 codes/s (hop 400), 1024 codes. Narrow encoder (16 filters)
    # because its first layers run at the sample rate and dominate CPU training time; a 4-block 256-wide
    # backbone because espeak-ng speech is a narrow domain. 5.9 M parameters (1.8 M encoder, 3.7 M backbone,
    # 0.4 M head); one fit_codec step on 8 x 1 s crops takes ~0.8-1.2 s on one CPU core.
    "small": WavTokenizerConfig(sample_rate=16000, ratios=(5, 5, 4, 4), n_filters=16, dim=128, codebook_size=1024,
                                backbone_dim=256, intermediate_dim=768, num_layers=4, groups=32, n_fft=1600),
    # Codec variants (docs/default-model.md, "Codec variants"): the small encoder with a twice as wide latent
    # and a 512-wide 8-block backbone (the backbone runs at 40 frames/s: 4x the parameters for ~1.5x the step
    # time); and a 1.5x wider encoder with the same latent and a 384-wide 6-block backbone.
    "medium": WavTokenizerConfig(sample_rate=16000, ratios=(5, 5, 4, 4), n_filters=16, dim=256, codebook_size=1024,
                                 backbone_dim=512, intermediate_dim=1536, num_layers=8, groups=32, n_fft=1600),
    "medium-enc": WavTokenizerConfig(sample_rate=16000, ratios=(5, 5, 4, 4), n_filters=24, dim=256,
                                     codebook_size=1024, backbone_dim=384, intermediate_dim=1152, num_layers=6,
                                     groups=32, n_fft=1600),
    # Tests: 8 kHz, 40 codes/s, 64 codes, a few thousand parameters.
    "tiny": WavTokenizerConfig(sample_rate=8000, ratios=(5, 5, 4, 2), n_filters=4, dim=16, codebook_size=64,
                               backbone_dim=32, intermediate_dim=64, num_layers=2, groups=8, n_fft=800),
}

# released checkpoint prefix -> this module's prefix
UPSTREAM_PREFIXES = {
    "feature_extractor.encodec.encoder.": "encoder.",
    "feature_extractor.encodec.quantizer.vq.layers.0._codebook.": "quantizer.",
    "backbone.": "backbone.",
    "head.": "head.",
}


# ----------------------------------------------------------------------------------------------
# Encoder: SEANet with weight-normed convs and reflect padding
# ----------------------------------------------------------------------------------------------
class WNConv1d(nn.Module):
    """Conv1d with legacy weight norm: ``w = g * v / ||v||`` (norm per output channel); keys weight_g/v."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.stride, self.dilation = stride, dilation
        # variance-preserving uniform weights, zero bias: unlike torch's default init, the signal does not fade
        # into the biases layer by layer, so training from scratch is far faster (loaders overwrite all of it)
        bound = math.sqrt(3 / (cin * kernel))
        v = torch.empty(cout, cin, kernel).uniform_(-bound, bound)
        g = torch.empty(cout, 1, 1)
        if not v.is_meta:  # (maths on the meta device is slow to set up)
            g.copy_(v.norm(dim=(1, 2), keepdim=True))
        self.weight_g = nn.Parameter(g)
        self.weight_v = nn.Parameter(v)
        self.bias = nn.Parameter(torch.zeros(cout))

    def weight(self) -> torch.Tensor:
        # torch's own kernel, as torch.nn.utils.weight_norm computes it: any other operation order differs by an
        # ulp now and then, which flips nearest-code choices against the released encoder
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight(), self.bias, stride=self.stride, dilation=self.dilation)


class _NormConv1d(nn.Module):
    # only here so that keys read `<i>.conv.conv.weight_g` like the checkpoint's SConv1d -> NormConv1d -> Conv1d
    def __init__(self, *args, **kw):
        super().__init__()
        self.conv = WNConv1d(*args, **kw)

    def forward(self, x):
        return self.conv(x)


def reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect padding that also works when the input is not longer than the pad (zero-extend, reflect, cut)."""
    length = x.shape[-1]
    widest = max(left, right)
    if length <= widest:
        extra = widest - length + 1
        x = F.pad(x, (0, extra))
        y = F.pad(x, (left, right), mode="reflect")
        return y[..., : y.shape[-1] - extra]
    return F.pad(x, (left, right), mode="reflect")


class SConv1d(nn.Module):
    """Non-causal conv with 'same'-style reflect padding plus the extra right pad that completes the last window,
    so a stride-s conv maps T samples to ceil(T/s) frames."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = _NormConv1d(cin, cout, kernel, stride, dilation)
        self.k_eff = (kernel - 1) * dilation + 1
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_total = self.k_eff - self.stride
        length = x.shape[-1]
        # ideal length = (ceil((T - k_eff + pad_total)/s + 1) - 1) * s + k_eff - pad_total, in integers
        a = length - self.k_eff + pad_total
        extra = (-(-a // self.stride)) * self.stride + self.k_eff - pad_total - length
        right = pad_total // 2
        return self.conv(reflect_pad(x, pad_total - right, right + extra))


class ResBlock(nn.Module):
    """ELU, conv k3 (dim -> dim/compress), ELU, conv k1 back; plus a k1 conv shortcut."""

    def __init__(self, dim: int, kernel: int = 3, compress: int = 2):
        super().__init__()
        hidden = dim // compress
        self.block = nn.Sequential(nn.ELU(), SConv1d(dim, hidden, kernel), nn.ELU(), SConv1d(hidden, dim, 1))
        self.shortcut = SConv1d(dim, dim, 1)

    def forward(self, x):
        return self.shortcut(x) + self.block(x)


class SLSTM(nn.Module):
    """Unidirectional LSTM over time with a skip connection; [B, C, T] in and out."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, layers)

    def forward(self, x):
        x = x.permute(2, 0, 1)
        y, _ = self.lstm(x)
        return (y + x).permute(1, 2, 0)


class SEANetEncoder(nn.Module):
    """wav [B, 1, T] -> latents [B, dim, ceil(T / hop)]."""

    def __init__(self, cfg: WavTokenizerConfig):
        super().__init__()
        nf = cfg.n_filters
        layers: list[nn.Module] = [SConv1d(1, nf, 7)]
        mult = 1
        for ratio in reversed(cfg.ratios):
            layers += [ResBlock(mult * nf), nn.ELU(), SConv1d(mult * nf, 2 * mult * nf, 2 * ratio, stride=ratio)]
            mult *= 2
        layers += [SLSTM(mult * nf, cfg.lstm_layers), nn.ELU(), SConv1d(mult * nf, cfg.dim, 7)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


# ----------------------------------------------------------------------------------------------
# Quantizer: one codebook, plain L2 nearest neighbour; EMA statistics kept as buffers (training only)
# ----------------------------------------------------------------------------------------------
class Codebook(nn.Module):
    inited: torch.Tensor
    cluster_size: torch.Tensor
    embed: torch.Tensor
    embed_avg: torch.Tensor

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("inited", torch.zeros(1))
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed", torch.empty(size, dim).uniform_(-1.0, 1.0))
        self.register_buffer("embed_avg", self.embed.clone())

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] -> codes [...] (lowest index on ties)."""
        flat = x.reshape(-1, x.shape[-1])
        e = self.embed
        score = -(flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None])
        return score.argmax(dim=-1).reshape(x.shape[:-1])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, L] -> features [B, D, L]."""
        return F.embedding(codes, self.embed).transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# Decoder: Vocos backbone with the attention pos_net
# ----------------------------------------------------------------------------------------------
def _swish(x):
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, dim, eps=1e-6)
        self.conv1 = nn.Conv1d(dim, dim, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, dim, eps=1e-6)
        self.dropout = nn.Dropout(0.1)
        self.conv2 = nn.Conv1d(dim, dim, 3, padding=1)

    def forward(self, x):
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all frames (no mask, no positions)."""

    def __init__(self, dim: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.q = nn.Conv1d(dim, dim, 1)
        self.k = nn.Conv1d(dim, dim, 1)
        self.v = nn.Conv1d(dim, dim, 1)
        self.proj_out = nn.Conv1d(dim, dim, 1)

    def forward(self, x):
        h = self.norm(x)
        q, k, v = (m(h).transpose(1, 2) for m in (self.q, self.k, self.v))  # [B, L, C]
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj_out(h.transpose(1, 2))


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, then a per-condition scale and shift (row 0: bandwidth id 0)."""

    def __init__(self, n: int, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.scale = nn.Embedding(n, dim, _weight=torch.ones(n, dim))
        self.shift = nn.Embedding(n, dim, _weight=torch.zeros(n, dim))

    def forward(self, x, cond: int = 0):
        x = F.layer_norm(x, (self.dim,), eps=self.eps)
        return x * self.scale.weight[cond] + self.shift.weight[cond]


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, hidden: int, scale: float, n_cond: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = AdaLayerNorm(n_cond, dim)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.pwconv2 = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), scale))

    def forward(self, x, cond: int = 0):  # x [B, C, L]
        h = self.norm(self.dwconv(x).transpose(1, 2), cond)
        h = self.gamma * self.pwconv2(F.gelu(self.pwconv1(h)))
        return x + h.transpose(1, 2)


class VocosBackbone(nn.Module):
    """features [B, dim, L] -> hidden [B, L, backbone_dim]."""

    def __init__(self, cfg: WavTokenizerConfig):
        super().__init__()
        d, g = cfg.backbone_dim, cfg.groups
        self.embed = nn.Conv1d(cfg.dim, d, 7, padding=3)
        self.pos_net = nn.Sequential(ResnetBlock(d, g), ResnetBlock(d, g), AttnBlock(d, g), ResnetBlock(d, g),
                                     ResnetBlock(d, g), nn.GroupNorm(g, d, eps=1e-6))
        self.norm = AdaLayerNorm(cfg.adanorm_embeddings, d)
        self.convnext = nn.ModuleList(ConvNeXtBlock(d, cfg.intermediate_dim, 1 / cfg.num_layers,
                                                    cfg.adanorm_embeddings) for _ in range(cfg.num_layers))
        self.final_layer_norm = nn.LayerNorm(d, eps=1e-6)
        if not self.embed.weight.is_meta:
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):  # as Vocos: truncated normal (std 0.02) convs and linears, zero bias
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x, cond: int = 0):
        x = self.pos_net(self.embed(x))
        x = self.norm(x.transpose(1, 2), cond).transpose(1, 2)
        for block in self.convnext:
            x = block(x, cond)
        return self.final_layer_norm(x.transpose(1, 2))


# ----------------------------------------------------------------------------------------------
# ISTFT head, "same" padding
# ----------------------------------------------------------------------------------------------
class ISTFT(nn.Module):
    """Inverse STFT by irfft + periodic Hann + overlap-add, trimmed by (win - hop)/2 per side and divided by
    the overlap-added squared window: L frames -> L * hop samples."""

    window: torch.Tensor

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        if (n_fft - hop) % 2 or n_fft < hop:
            raise ValueError(f"n_fft {n_fft} and hop {hop}: need n_fft >= hop and an even difference")
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.empty(n_fft))
        if not self.window.is_meta:
            self.window.copy_(torch.hann_window(n_fft, device=self.window.device))

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:  # [B, n_fft, L] -> [B, (L-1)*hop + n_fft]
        n = (frames.shape[-1] - 1) * self.hop + self.n_fft
        return F.fold(frames, output_size=(1, n), kernel_size=(1, self.n_fft), stride=(1, self.hop))[:, 0, 0]

    def forward(self, spec: torch.Tensor) -> torch.Tensor:  # complex [B, n_fft/2+1, L]
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1, norm="backward") * self.window[None, :, None]
        pad = (self.n_fft - self.hop) // 2
        y = self._overlap_add(frames)
        env = self._overlap_add(self.window.square()[None, :, None].expand(1, -1, spec.shape[-1]))
        y, env = y[:, pad: y.shape[-1] - pad], env[:, pad: env.shape[-1] - pad]
        return y / env


class ISTFTHead(nn.Module):
    """hidden [B, L, dim] -> wav [B, L * hop]: log-magnitude and phase per bin, then ISTFT."""

    def __init__(self, cfg: WavTokenizerConfig):
        super().__init__()
        self.out = nn.Linear(cfg.backbone_dim, cfg.n_fft + 2)
        self.istft = ISTFT(cfg.n_fft, cfg.hop)

    def forward(self, x):
        logmag, phase = self.out(x).transpose(1, 2).chunk(2, dim=1)
        mag = torch.exp(logmag).clamp(max=100.0)
        return self.istft(torch.polar(mag, phase))


# ----------------------------------------------------------------------------------------------
# The whole codec
# ----------------------------------------------------------------------------------------------
class WavTokenizerNet(nn.Module):
    def __init__(self, cfg: WavTokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = SEANetEncoder(cfg)
        self.quantizer = Codebook(cfg.codebook_size, cfg.dim)
        self.backbone = VocosBackbone(cfg)
        self.head = ISTFTHead(cfg)

    def encode_latents(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, T] -> latents [B, dim, ceil(T / hop)]."""
        return self.encoder(wav[:, None])

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, T] -> codes [B, ceil(T / hop)]."""
        return self.quantizer.nearest(self.encode_latents(wav).transpose(1, 2))

    def decode_features(self, feats: torch.Tensor) -> torch.Tensor:
        """features [B, dim, L] -> wav [B, L * hop]."""
        return self.head(self.backbone(feats))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, L] -> wav [B, L * hop]."""
        return self.decode_features(self.quantizer.lookup(codes))


def to_upstream(state: dict) -> dict:
    """This module's state_dict -> the released checkpoint's key names (inference part)."""
    back = {v: k for k, v in UPSTREAM_PREFIXES.items()}
    out = {}
    for k, v in state.items():
        for mine, theirs in back.items():
            if k.startswith(mine):
                out[theirs + k[len(mine):]] = v
                break
    return out


def from_upstream(state: dict) -> dict:
    """Released checkpoint keys -> this module's; everything else (SEANet decoder, discriminators, ...) dropped."""
    out = {}
    for k, v in state.items():
        for theirs, mine in UPSTREAM_PREFIXES.items():
            if k.startswith(theirs):
                out[mine + k[len(theirs):]] = v
                break
    return out
