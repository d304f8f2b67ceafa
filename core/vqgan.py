"""The Chameleon image VQGAN (taming-transformers layout): encoder, L2 vector quantizer, decoder.

Module and parameter names equal the original ``vqgan.ckpt`` (``encoder.down.N.block.M.conv1`` ...,
``quantize.embedding.weight``, ``quant_conv``, ``post_quant_conv``, ``decoder.up.N...``), so checkpoints load
without renaming. Design: docs/formats.md, "Image tokenizer".
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class VQGANConfig:
    resolution: int = 512  # square input side in pixels
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128  # base channels
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # one level per entry; len - 1 downsamples
    num_res_blocks: int = 2  # per encoder level (decoder levels have one more)
    attn_resolutions: tuple[int, ...] = ()  # feature-map sides with attention in the down/up levels
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 8192  # codebook size
    dropout: float = 0.0
    norm_groups: int = 32  # GroupNorm groups (32 in Chameleon; smaller presets use fewer)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if self.resolution % self.downsample:
            raise ValueError(f"resolution {self.resolution} is not divisible by the downsampling {self.downsample}")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"channels {bad} are not divisible by norm_groups {self.norm_groups}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> int:
        """Side of the latent grid (32 for Chameleon)."""
        return self.resolution // self.downsample

    @property
    def n_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def channels(self) -> list[int]:
        return [self.ch] + [self.ch * m for m in self.ch_mult]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VQGANConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


CONFIGS: dict[str, VQGANConfig] = {
    # Chameleon / Anole / AR-Omni: 512 px -> 32x32 = 1024 codes of 8192 x 256
    "chameleon": VQGANConfig(),
    # the bundled default model: 32 px -> 8x8 = 64 codes of 512 (0.77 M parameters). The corpus's 64-px scenes
    # survive the 32-px round trip (the scene analyser reads 100% of them back), and two downsamplings train
    # ~4x faster per step on a CPU than three at 64 px
    "small": VQGANConfig(resolution=32, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, z_channels=64, embed_dim=32,
                         n_embed=512, norm_groups=4),
    # unit tests: 16 px -> 4x4 = 16 codes of 64, milliseconds per batch
    "tiny": VQGANConfig(resolution=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=8, embed_dim=8,
                        n_embed=64, norm_groups=4),
}


def get_config(name: str, **overrides) -> VQGANConfig:
    if name not in CONFIGS:
        raise KeyError(f"unknown VQGAN preset {name!r} (known: {', '.join(CONFIGS)})")
    return replace(CONFIGS[name], **overrides)


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------
def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _norm(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN -> swish -> conv3 -> GN -> swish -> dropout -> conv3, plus a 1x1 ``nin_shortcut`` when channels change."""

    def __init__(self, c_in: int, c_out: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions (1x1 conv q, k, v, proj_out) plus the residual."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = _norm(c, groups)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(b, c, hh * ww).transpose(1, 2)  # [B, HW, C]
        k = self.k(h).reshape(b, c, hh * ww)  # [B, C, HW]
        v = self.v(h).reshape(b, c, hh * ww)  # [B, C, HW]
        # explicit softmax(q k^T / sqrt(C)) as the reference computes it (fused kernels reorder the sums)
        w = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)  # [B, HWq, HWk]
        h = torch.bmm(v, w.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a stride-2 3x3 conv without padding."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (possibly empty) and an optional resampler."""

    downsample: nn.Module  # set only on levels that resample
    upsample: nn.Module

    def __init__(self, blocks: Sequence[nn.Module], attns: Sequence[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, c: int, groups: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(c, c, groups, dropout)
        self.attn_1 = AttnBlock(c, groups)
        self.block_2 = ResnetBlock(c, c, groups, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """[B, 3, R, R] in [-1, 1] -> [B, z_channels, R/2^(L-1), R/2^(L-1)]."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        g, res = cfg.norm_groups, cfg.resolution
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        c_in = cfg.ch
        for i, m in enumerate(cfg.ch_mult):
            c_out = cfg.ch * m
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(c_in, c_out, g, cfg.dropout))
                c_in = c_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(c_in, g))
            level = _Level(blocks, attns)
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(c_in)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(c_in, g, cfg.dropout)
        self.norm_out = _norm(c_in, g)
        self.conv_out = nn.Conv2d(c_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in cast("Sequence[_Level]", self.down):
            h = level.run_blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """[B, z_channels, g, g] -> [B, out_ch, R, R] (nominally [-1, 1]; no tanh)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        g = cfg.norm_groups
        c_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.grid
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, padding=1)
        self.mid = _Mid(c_in, g, cfg.dropout)
        levels: list[_Level] = []
        for i in reversed(range(len(cfg.ch_mult))):
            c_out = cfg.ch * cfg.ch_mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(c_in, c_out, g, cfg.dropout))
                c_in = c_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(c_in, g))
            level = _Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(c_in)
                res *= 2
            levels.insert(0, level)  # up[i] is level i; it runs from the coarsest (last) to level 0
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(c_in, g)
        self.conv_out = nn.Conv2d(c_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(cast("Sequence[_Level]", self.up)):
            h = level.run_blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Plain L2 nearest neighbour over ``embedding.weight`` [K, D] (no normalisation, no remap)."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        w = torch.empty(n_embed, embed_dim)
        if w.device.type != "meta":  # random init on the meta device would import torch._dynamo (~2 s per CLI call)
            w.uniform_(-1.0 / n_embed, 1.0 / n_embed)
        self.embedding = nn.Embedding(n_embed, embed_dim, _weight=w)

    @torch.no_grad()
    def nearest(self, z: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """z [N, D] -> codes [N]. Ties go to the lowest index (argmin returns the first minimum)."""
        e = self.embedding.weight
        e2 = (e * e).sum(1)  # [K]
        out = []
        for zc in z.split(chunk):
            # the reference's ||z||^2 + ||e||^2 - 2 z.e, term for term, so near-ties resolve the same way
            d = (zc * zc).sum(1, keepdim=True) + e2 - 2 * torch.einsum("bd,dn->bn", zc, e.t())
            out.append(d.argmin(1))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=z.device)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.embedding.weight)


class VQModel(nn.Module):
    """encoder -> quant_conv -> quantize; codes -> post_quant_conv -> decoder. ``decoder=False``: encoder only."""

    def __init__(self, cfg: VQGANConfig, decoder: bool = True):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg) if decoder else None

    @property
    def has_decoder(self) -> bool:
        return self.decoder is not None

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, R, R] -> pre-quantization latents [B, embed_dim, g, g]."""
        return self.quant_conv(self.encoder(x))

    def quantize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """[B, D, g, g] -> codes [B, g*g] in row-major raster order."""
        b, d = z.shape[:2]
        return self.quantize.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).view(b, -1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, R, R] -> codes [B, n_tokens]."""
        return self.quantize_latents(self.encode_latents(x))

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, g*g] -> quantized latents [B, D, g, g]."""
        g = self.cfg.grid
        # contiguous, as Meta's code makes it: convolutions over a permuted view may sum in another order
        return self.quantize.lookup(codes).view(codes.shape[0], g, g, -1).permute(0, 3, 1, 2).contiguous()

    def decode_latents(self, zq: torch.Tensor) -> torch.Tensor:
        """quantized latents [B, D, g, g] -> pixels [B, 3, R, R] (unclamped)."""
        if self.decoder is None:
            raise RuntimeError("this VQModel was built without a decoder (decoder=False)")
        return self.decoder(self.post_quant_conv(zq))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_latents(self.embed_codes(codes))


# ----------------------------------------------------------------------------------------------
# Configs from checkpoints
# ----------------------------------------------------------------------------------------------
def config_from_ddconfig(params: dict) -> VQGANConfig:
    """taming ``model.params`` (``ddconfig`` + ``n_embed`` + ``embed_dim``) -> VQGANConfig."""
    dd = params.get("ddconfig", params)
    if dd.get("double_z"):
        raise ValueError("double_z VQGANs (KL autoencoders) are not supported")
    return VQGANConfig(
        resolution=int(dd.get("resolution", 512)), in_channels=int(dd.get("in_channels", 3)),
        out_ch=int(dd.get("out_ch", 3)), ch=int(dd["ch"]), ch_mult=tuple(dd["ch_mult"]),
        num_res_blocks=int(dd["num_res_blocks"]), attn_resolutions=tuple(dd.get("attn_resolutions") or ()),
        z_channels=int(dd["z_channels"]), embed_dim=int(params.get("embed_dim", dd["z_channels"])),
        n_embed=int(params["n_embed"]), dropout=float(dd.get("dropout", 0.0)))


def config_from_state(state: dict, resolution: int = 512, norm_groups: int = 32) -> VQGANConfig:
    """Infer the architecture from encoder/quantizer shapes (transformers checkpoints carry no ddconfig).

    ``resolution`` and ``norm_groups`` cannot be read from shapes; the defaults are Chameleon's.
    """
    ch, in_ch = state["encoder.conv_in.weight"].shape[:2]
    n_levels = 0
    while f"encoder.down.{n_levels}.block.0.conv1.weight" in state:
        n_levels += 1
    n_blocks = 0
    while f"encoder.down.0.block.{n_blocks}.conv1.weight" in state:
        n_blocks += 1
    ch_mult = tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(n_levels))
    attn = tuple(resolution >> i for i in range(n_levels) if f"encoder.down.{i}.attn.0.q.weight" in state)
    n_embed, embed_dim = state["quantize.embedding.weight"].shape
    out_ch = state["decoder.conv_out.weight"].shape[0] if "decoder.conv_out.weight" in state else 3
    return VQGANConfig(resolution=resolution, in_channels=int(in_ch), out_ch=int(out_ch), ch=int(ch), ch_mult=ch_mult,
                       num_res_blocks=n_blocks, attn_resolutions=attn,
                       z_channels=int(state["encoder.conv_out.weight"].shape[0]), embed_dim=int(embed_dim),
                       n_embed=int(n_embed), norm_groups=norm_groups)
