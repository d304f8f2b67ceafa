"""Train a WavTokenizer codec: multi-resolution mel + log-STFT reconstruction, commitment loss, EMA codebook
with k-means initialisation and dead-code restarts, and an optional streaming-consistency term. No adversarial
losses (they cost more than a CPU budget allows): expect buzzier, phasier audio than the released codec.
Only bandwidth id 0 (the row every caller uses) of the AdaLayerNorm tables is trained.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..speech_tokenizer import WavTokenizer
from ..wavtokenizer import Codebook


# ----------------------------------------------------------------------------------------------
# Spectral losses (torch.stft; our own mel filterbank)
# ----------------------------------------------------------------------------------------------
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> torch.Tensor:
    """Triangular HTK-mel filters [n_mels, n_fft // 2 + 1] (unnormalised, as torchaudio's default)."""
    fmax = fmax or sample_rate / 2
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return torch.from_numpy(fb.astype(np.float32))


class SpectralLoss(torch.nn.Module):
    """Mean over resolutions of L1(log mel) + L1(log |STFT|); windows 16 ms .. 128 ms."""

    def __init__(self, sample_rate: int):
        super().__init__()
        base = 2 ** round(math.log2(sample_rate * 0.016))
        self.ffts = [base * m for m in (1, 2, 4, 8)]
        for n in self.ffts:
            self.register_buffer(f"win{n}", torch.hann_window(n), persistent=False)
            self.register_buffer(f"mel{n}", mel_filterbank(sample_rate, n, min(80, n // 8)), persistent=False)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y (output), x (target) [B, T] -> (mel loss, stft loss)."""
        mel_l = stft_l = y.new_zeros(())
        for n in self.ffts:
            win, fb = getattr(self, f"win{n}"), getattr(self, f"mel{n}")
            sy, sx = (torch.stft(s, n, n // 4, window=win, return_complex=True).abs() for s in (y, x))
            mel_l = mel_l + F.l1_loss(torch.log(fb @ sy + 1e-5), torch.log(fb @ sx + 1e-5))
            stft_l = stft_l + F.l1_loss(torch.log(sy + 1e-5), torch.log(sx + 1e-5))
        return mel_l / len(self.ffts), stft_l / len(self.ffts)


# ----------------------------------------------------------------------------------------------
# EMA codebook
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def kmeans_init(cb: Codebook, z: torch.Tensor, iters: int, g: torch.Generator, per_step: int) -> None:
    """Lloyd's k-means on latents z [N, D] -> codebook, EMA statistics scaled to ``per_step`` frames a step."""
    k = cb.embed.shape[0]
    idx = torch.randperm(len(z), generator=g)[:k] if len(z) >= k else torch.randint(len(z), (k,), generator=g)
    c = z[idx].clone()
    counts = torch.zeros(k)
    for _ in range(iters):
        assign = torch.cdist(z, c).argmin(1)
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(c).index_add_(0, assign, z)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], c)
    cb.embed.copy_(c)
    cb.cluster_size.copy_(counts * per_step / len(z))
    cb.embed_avg.copy_(c * cb.cluster_size[:, None])
    cb.inited.fill_(1.0)


@torch.no_grad()
def ema_update(cb: Codebook, z: torch.Tensor, codes: torch.Tensor, decay: float, eps: float = 1e-5) -> None:
    k = cb.embed.shape[0]
    cb.cluster_size.mul_(decay).add_(torch.bincount(codes, minlength=k).float(), alpha=1 - decay)
    cb.embed_avg.mul_(decay).add_(torch.zeros_like(cb.embed).index_add_(0, codes, z), alpha=1 - decay)
    n = cb.cluster_size.sum()
    smoothed = (cb.cluster_size + eps) / (n + k * eps) * n  # Laplace smoothing
    cb.embed.copy_(cb.embed_avg / smoothed[:, None])


@torch.no_grad()
def restart_dead(cb: Codebook, z: torch.Tensor, dead: torch.Tensor, count: float, g: torch.Generator) -> int:
    """Codes flagged ``dead`` jump to random latents of this batch, with EMA count ``count``."""
    dead = dead.nonzero()[:, 0]
    if len(dead):
        pick = z[torch.randint(len(z), (len(dead),), generator=g)]
        cb.embed[dead] = pick
        cb.cluster_size[dead] = count
        cb.embed_avg[dead] = pick * count
    return len(dead)


def stream_window(n: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A chunked-decoder window in an n-frame crop: (start, release from, release to, end); a quarter of the
    time the very first chunk (no left context)."""
    c = min(n, int(rng.integers(4, 17)))
    a = 0 if rng.random() < 0.25 else int(rng.integers(0, n - c + 1))
    left, right = int(rng.integers(0, 61)), int(rng.integers(2, 11))
    return max(0, a - left), a, a + c, min(n, a + c + right)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
class Crops:
    """Random fixed-length crops with a random peak level in [-6, -1] dBFS (as the reference's training data)."""

    def __init__(self, wavs: list[np.ndarray], seg: int, rng: np.random.Generator):
        self.wavs = [np.asarray(w, dtype=np.float32) for w in wavs if len(w)]
        if not self.wavs:
            raise ValueError("fit_codec needs at least one non-empty clip")
        self.peaks = [max(float(np.abs(w).max()), 1e-4) for w in self.wavs]
        lens = np.array([max(len(w), seg) for w in self.wavs], dtype=np.float64)
        self.p = lens / lens.sum()
        self.seg, self.rng = seg, rng

    def batch(self, n: int) -> torch.Tensor:
        out = np.zeros((n, self.seg), dtype=np.float32)
        for i in range(n):
            j = self.rng.choice(len(self.wavs), p=self.p)
            w = self.wavs[j]
            if len(w) >= self.seg:
                s = self.rng.integers(0, len(w) - self.seg + 1)
                out[i] = w[s: s + self.seg]
            else:
                s = self.rng.integers(0, self.seg - len(w) + 1)
                out[i, s: s + len(w)] = w
            out[i] *= 10 ** (self.rng.uniform(-6, -1) / 20) / self.peaks[j]
        return torch.from_numpy(out)


# ----------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------
def fit_codec(tok: WavTokenizer, wavs: list[np.ndarray], *, steps: int, batch_size: int, lr: float, seed: int,
              segment_s: float = 1.0, on_step: Callable[[int, dict], None] | None = None,
              commit_weight: float = 1.0, decay: float = 0.95, kmeans_iters: int = 20,
              dead_after: int = 20, warmup: int | None = None, stream_weight: float = 0.0,
              stream_from: float = 0.5, decoder_only: bool = False) -> dict:
    """Train ``tok`` in place on mono clips at ``tok.sample_rate``; deterministic for a seed (same machine).

    A code not chosen in ``dead_after`` steps restarts at a random latent of the batch. (The reference's rule,
    EMA count < 2, assumes ~10 frames per code per step; small CPU batches give well under one, and early in
    training the encoder drifts faster than an EMA count decays, collapsing the codebook onto a few codes.)
    ``stream_weight`` > 0 adds a streaming-consistency term: each step also decodes a random window of the
    crop's codes (as the chunked decoder would: some left context, a few frames of look-ahead) and penalises
    its difference from the whole-crop decode over the released frames, relative to the crop's energy. The
    decoder's GroupNorms and attention span all frames, so without it chunked and whole decodes drift apart.
    The term starts after ``stream_from`` of the steps and ramps up over a tenth of them: switched on from
    the start it wins, and the codec collapses to a constant (perfectly consistent) output.
    ``decoder_only`` freezes the encoder and codebook, so the codes stay exactly as they were (e.g. to make a
    trained codec stream-friendly without invalidating token data: ``stream_weight=10, stream_from=0``).
    Returns the final losses, per-step history, restarts and codebook usage.
    """
    net, cb, dev = tok.net, tok.net.quantizer, tok.device
    hop = tok.hop
    seg = max(1, round(segment_s * tok.sample_rate / hop)) * hop
    per_step = batch_size * seg // hop  # latent frames per batch
    rng = np.random.default_rng(seed)
    data = Crops(wavs, seg, rng)
    wrng = np.random.default_rng([seed, 1])
    t0 = time.time()
    history: list[dict] = []
    restarts = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        loss_fn = SpectralLoss(tok.sample_rate).to(dev)
        params = list((net.backbone if decoder_only else net).parameters())
        if decoder_only:
            params += list(net.head.parameters())
            if float(cb.inited) == 0:
                raise ValueError("decoder_only training needs a codec whose codebook is already trained")
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.8, 0.99), weight_decay=0.01)
        warm = max(1, steps // 20) if warmup is None else max(1, warmup)
        def lr_at(s: int) -> float:  # linear warm-up, cosine decay to a tenth
            return min(1.0, (s + 1) / warm) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        net.train()
        if float(cb.inited) == 0:
            with torch.no_grad():
                n_batches = max(1, min(16, math.ceil(4 * cb.embed.shape[0] / per_step)))
                z = torch.cat([net.encode_latents(data.batch(batch_size).to(dev)).transpose(1, 2).flatten(0, 1)
                               for _ in range(n_batches)])
            kmeans_init(cb, z.cpu(), kmeans_iters, g, per_step)
            cb.to(dev)
        usage = torch.zeros(cb.embed.shape[0], dtype=torch.bool)
        last_used = torch.zeros(cb.embed.shape[0], dtype=torch.long, device=dev)
        for step in range(steps):
            x = data.batch(batch_size).to(dev)
            with torch.set_grad_enabled(not decoder_only):
                z = net.encode_latents(x)  # [B, D, L]
            flat = z.transpose(1, 2).reshape(-1, z.shape[1])
            codes = cb.nearest(flat.detach())
            q = cb.embed[codes].detach()
            commit = F.mse_loss(flat, q)
            feats = (flat + (q - flat).detach()).reshape(z.shape[0], z.shape[2], -1).transpose(1, 2)
            y = net.decode_features(feats)
            mel, stft = loss_fn(y, x)
            loss = mel + stft + commit_weight * commit
            cons = torch.zeros(())
            ramp = min(1.0, max(0.0, (step / max(1, steps) - stream_from) * 10))
            if stream_weight > 0 and ramp > 0:
                s, a, b, e = stream_window(feats.shape[-1], wrng)
                # decoder only: consistency is the decoder's business; letting it reach the encoder degrades codes
                yw = net.decode_features(feats.detach()[..., s:e])[:, (a - s) * hop: (b - s) * hop]
                ref = y[:, a * hop: b * hop].detach()
                cons = (yw - ref).pow(2).mean() / (y.detach().pow(2).mean() + 1e-8)
                loss = loss + ramp * stream_weight * cons
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            sched.step()
            if not decoder_only:
                ema_update(cb, flat.detach(), codes, decay)
                last_used[codes] = step
                dead = last_used < step - dead_after
                restarts += restart_dead(cb, flat.detach(), dead, per_step / cb.embed.shape[0], g)
                last_used[dead] = step
            usage[codes.cpu()] = True
            rec = {"step": step + 1, "loss": loss.item(), "mel": mel.item(), "stft": stft.item(),
                   "commit": commit.item(), "stream": cons.item(), "lr": sched.get_last_lr()[0],
                   "restarts": restarts}
            history.append(rec)
            if on_step is not None:
                on_step(step + 1, rec)
    net.eval()
    cb.inited.fill_(1.0)
    last = history[-1] if history else {}
    return {"steps": steps, "loss": last.get("loss"), "mel": last.get("mel"), "stft": last.get("stft"),
            "commit": last.get("commit"), "restarts": restarts, "codes_used": int(usage.sum()),
            "seconds": time.time() - t0, "history": history}
