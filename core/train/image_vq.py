"""Train a VQGAN image tokenizer on a list of images (for aromni's own small models).

Objective, per batch of preprocessed images x in [-1, 1]:

    loss = |x̂ - x|₁ + (x̂ - x)²  +  grad_weight · |∇x̂ - ∇x|₁  +  beta · ‖z - sg(e)‖²  (+ ‖sg(z) - e‖² if not EMA)

- reconstruction: L1 + L2 in pixel space plus an image-gradient L1 term (finite differences along x and y),
  which keeps edges sharp where L1/L2 alone blur them; no GAN or LPIPS (no pretrained network is needed);
- codebook: ``ema=True`` (default) updates the codebook as exponential moving averages of the assigned encoder
  outputs (Laplace-smoothed counts); ``ema=False`` learns it by gradient (codebook loss) with the straight-through
  estimator; the encoder always gets the straight-through gradient plus the commitment term;
- the first ``quant_delay`` steps (default 30%) train the plain autoencoder; then the codebook starts as k-means
  centroids of encoder outputs. On flat-colour scenes the network learns shapes long before colours (objects
  come out in the mean colour for the first ~1000 steps even without a quantizer); quantizing from step 0
  makes that plateau longer still, as the commitment pulls the latents onto a colour-blind codebook;
- ``fg_weight`` > 0 up-weights the pixels that differ from the image's border colour in the L1/L2 terms. On
  scenes of small objects on a plain background (the synthetic corpus) the unweighted loss is ~95% background:
  objects stay blurred and in the mean colour for thousands of steps; with ``fg_weight=10`` colours are right
  after ~300 steps (measured on the "small" preset);
- every ``restart_every`` steps, codes whose usage fell below ``dead_frac`` of the mean are restarted on
  random encoder outputs of the current batch.

Deterministic for a seed on a given device (batch order, restarts and init come from one generator).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..image_tokenizer import VQGANTokenizer, preprocess_batch


def _grad_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]
    return F.l1_loss(dx(a), dx(b)) + F.l1_loss(dy(a), dy(b))


def _foreground_weights(x: torch.Tensor, fg_weight: float) -> torch.Tensor:
    """Per-pixel loss weights [B, 1, R, R], mean 1 per image: pixels that differ from the image's border colour
    (its background) weigh ``1 + fg_weight``, the rest 1."""
    border = torch.cat([x[..., :2, :].flatten(2), x[..., -2:, :].flatten(2),
                        x[..., :, :2].flatten(2), x[..., :, -2:].flatten(2)], -1)  # [B, 3, P]
    bg = border.median(-1).values[..., None, None]  # [B, 3, 1, 1]
    w = 1 + fg_weight * ((x - bg).abs().amax(1, keepdim=True) > 0.1).float()
    return w / w.mean((2, 3), keepdim=True)


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _sample_rows(z: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """n rows of z [M, D] chosen at random (with replacement only when M < n)."""
    m = z.shape[0]
    idx = torch.randperm(m, generator=g)[:n] if m >= n else torch.randint(m, (n,), generator=g)
    return z[idx.to(z.device)]


@torch.no_grad()
def _latents(model, x: torch.Tensor, batch_size: int, dev) -> torch.Tensor:
    """Encoder outputs [N*g*g, D] of pixels x [N, 3, R, R]."""
    out = [model.encode_latents(xb.to(dev)) for xb in x.split(batch_size)]
    z = torch.cat(out)
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


@torch.no_grad()
def _kmeans(z: torch.Tensor, k: int, iters: int, g: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means on z [M, D] from random rows; empty clusters are re-seeded on random rows."""
    c = _sample_rows(z, k, g).clone()
    for _ in range(iters):
        d = (z * z).sum(1, keepdim=True) + (c * c).sum(1) - 2 * z @ c.t()
        a = d.argmin(1)
        n = torch.bincount(a, minlength=k).float()
        s = torch.zeros_like(c).index_add_(0, a, z)
        empty = n == 0
        c = torch.where(empty[:, None], c, s / n.clamp(min=1)[:, None])
        if empty.any():
            c[empty] = _sample_rows(z, int(empty.sum()), g)
    return c


@torch.no_grad()
def evaluate(tok: VQGANTokenizer, x: torch.Tensor, batch_size: int = 32) -> dict:
    """Reconstruction metrics on pixels x [N, 3, R, R]: mse and PSNR (on [0, 1]), codes used, perplexity."""
    model = tok.model
    was_training = model.training
    model.eval()
    se, n, counts = 0.0, 0, torch.zeros(tok.codebook_size, dtype=torch.long)
    for xb in x.split(batch_size):
        xb = xb.to(tok.device)
        codes = model.encode(xb)
        rec = model.decode(codes).clamp(-1, 1)
        se += float(((rec - xb) / 2).pow(2).sum())  # error on the [0, 1] scale
        n += xb.numel()
        counts += torch.bincount(codes.flatten().cpu(), minlength=tok.codebook_size)
    model.train(was_training)
    mse = se / max(n, 1)
    p = counts.float() / counts.sum().clamp(min=1)
    ppl = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    return {"mse": mse, "psnr": 10 * math.log10(1.0 / max(mse, 1e-12)), "codes_used": int((counts > 0).sum()),
            "perplexity": ppl}


def scene_accuracy(tok: VQGANTokenizer, images: Sequence, attrs: Sequence[dict], batch_size: int = 32) -> float:
    """Share of synthetic-corpus scenes (PIL ``images`` with their ``attrs``) whose reconstruction the corpus
    analyser reads back exactly: shape, colour, size, position and background. The ceiling of T2I on them."""
    from ..corpus import scenes

    keys = scenes.OBJECT_KEYS + ("background",)
    ok = 0
    for i in range(0, len(images), batch_size):
        recs = tok.decode(tok.encode(list(images[i:i + batch_size])))
        ok += sum(scenes.attrs_match(scenes.analyse(r), a, keys) for r, a in zip(recs, attrs[i:i + batch_size]))
    return ok / max(1, len(images))


def background_code_entropy(tok: VQGANTokenizer, attrs: Sequence[dict], batch_size: int = 32) -> dict:
    """How predictable the codes of empty background are: over the grid cells whose pixels are all background
    in the corpus scenes ``attrs`` (drawn canonically), the entropy of the code given (background colour, cell)
    in bits, and the share of cells holding that pair's most common code. A local tokenizer gives ~0 bits and
    ~100%; codes that also encode the distant object make every cell a guess for the language model."""
    import math

    import numpy as np
    from PIL import Image

    from ..corpus import scenes

    canon = [scenes.without_jitter(a) for a in attrs]
    images = [scenes.draw(a) for a in canon]
    codes = []
    for i in range(0, len(images), batch_size):
        codes += [np.asarray(c).reshape(-1) for c in tok.encode(images[i:i + batch_size])]
    grid = int(round(math.sqrt(len(codes[0])))) if codes else 1
    R = tok.resolution
    cell = R // grid
    per: dict = {}
    for c, a, im in zip(codes, canon, images):
        px = np.asarray(im.convert("RGB").resize((R, R), Image.Resampling.BOX)).astype(int)
        bg = np.array(scenes.BACKGROUNDS[a["background"]])
        for r in range(grid):
            for k in range(grid):
                if np.abs(px[r * cell:(r + 1) * cell, k * cell:(k + 1) * cell] - bg).max() < 8:
                    per.setdefault((a["background"], r, k), []).append(int(c[r * grid + k]))
    n = sum(len(v) for v in per.values())
    if not n:
        return {"cells": 0}
    bits = modal = 0.0
    for v in per.values():
        counts = np.bincount(v)
        p = counts[counts > 0] / len(v)
        bits += len(v) * float(-(p * np.log2(p)).sum())
        modal += counts.max()
    return {"cells": n, "bits_per_cell": bits / n, "modal_share": float(modal / n)}


def fit_image_vq(tok: VQGANTokenizer, images: Sequence, *, steps: int, batch_size: int = 16, lr: float = 1e-3,
                 seed: int = 0, on_step: Callable[[int, dict], None] | None = None, ema: bool = True,
                 ema_decay: float = 0.95, beta: float = 0.25, grad_weight: float = 0.5, restart_every: int = 20,
                 dead_frac: float = 0.03, warmup: int | None = None, quant_delay: int | None = None,
                 kmeans_iters: int = 10, kmeans_images: int = 512, flip: bool = False,
                 eval_images: int = 256, fg_weight: float = 0.0) -> dict:
    """Train ``tok`` in place on PIL ``images``; returns the final metrics.

    ``on_step(step, metrics)`` is called after every step with the batch losses (``loss``, ``recon``, ``l1``,
    ``l2``, ``grad``, ``commit``, ``codebook``, ``usage`` (distinct codes in the batch), ``restarted``,
    ``quantized`` (0 during the autoencoder warm-up), ``lr``).
    The result holds the mean of the last 10% of steps' losses, then ``mse``/``psnr``/``codes_used``/
    ``perplexity`` measured on (up to ``eval_images`` of) the training images, ``steps`` and ``seconds``.
    """
    if not tok.has_decoder:
        from ..errors import AromniError
        raise AromniError("cannot train an encoder-only image tokenizer (no decoder weights)")
    if len(images) == 0:
        from ..errors import AromniError
        raise AromniError("no training images")
    t0 = time.perf_counter()
    model, dev = tok.model, tok.device
    g = torch.Generator().manual_seed(seed)
    data = preprocess_batch(list(images), tok.resolution)  # [N, 3, R, R] on CPU
    codebook = model.quantize.embedding.weight
    K, D = codebook.shape
    params = [p for n, p in model.named_parameters() if not (ema and n == "quantize.embedding.weight")]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = max(1, steps // 20) if warmup is None else max(1, warmup)
    delay = min(steps - 1, steps * 3 // 10 if quant_delay is None else quant_delay) if steps else 0
    usage = torch.full((K,), 1.0, device=dev)  # EMA of hits per step (ST mode), for dead-code detection
    cluster = torch.zeros(K, device=dev)  # EMA-mode statistics
    embed_sum = torch.zeros(K, D, device=dev)
    history: list[dict] = []
    order = torch.randperm(len(data), generator=g)
    pos = 0
    model.train()
    for step in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(data), generator=g), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        x = data[idx]
        if flip:
            mirror = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        x = x.to(dev)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)

        z = model.encode_latents(x)  # [B, D, g, g]
        zf = z.permute(0, 2, 3, 1).reshape(-1, D)  # [B*g*g, D]
        quantizing = step >= delay
        if step == delay:  # the codebook starts as k-means centroids of the (warmed-up) encoder's outputs
            with torch.no_grad():
                codebook.copy_(_kmeans(_latents(model, data[:kmeans_images], batch_size, dev), K, kmeans_iters, g))
                embed_sum.copy_(codebook)
                cluster.fill_(1.0)
                usage.fill_(1.0)
        if quantizing:
            codes = model.quantize.nearest(zf.detach())
            e = codebook[codes] if not ema else codebook.detach()[codes]
            commit = F.mse_loss(zf, e.detach())
            cb_loss = F.mse_loss(e, zf.detach()) if not ema else zf.new_zeros(())
            zq = (zf + (e - zf).detach()).view(z.shape[0], z.shape[2], z.shape[3], D).permute(0, 3, 1, 2)
        else:  # autoencoder warm-up: the latent space learns to carry colour and shape before it is quantized
            codes, commit, cb_loss, zq = None, zf.new_zeros(()), zf.new_zeros(()), z
        rec = model.decode_latents(zq)
        if fg_weight:
            w = _foreground_weights(x, fg_weight)
            l1, l2 = ((rec - x).abs() * w).mean(), ((rec - x).pow(2) * w).mean()
        else:
            l1, l2 = F.l1_loss(rec, x), F.mse_loss(rec, x)
        gl = _grad_l1(rec, x)
        recon = l1 + l2 + grad_weight * gl
        loss = recon + beta * commit + cb_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

        restarted = 0
        counts = torch.bincount(codes, minlength=K).float() if codes is not None else torch.zeros(K, device=dev)
        with torch.no_grad():
            if quantizing and ema:
                assert codes is not None  # set whenever quantizing
                cluster.mul_(ema_decay).add_(counts, alpha=1 - ema_decay)
                embed_sum.mul_(ema_decay).index_add_(0, codes, zf.detach(), alpha=1 - ema_decay)
                n = cluster.sum()
                smoothed = (cluster + 1e-5) / (n + K * 1e-5) * n
                codebook.copy_(embed_sum / smoothed[:, None])
            elif quantizing:
                usage.mul_(ema_decay).add_(counts, alpha=1 - ema_decay)
            use = cluster if ema else usage
            if quantizing and restart_every and (step + 1 - delay) % restart_every == 0 and step + 1 < steps:
                dead = (use < dead_frac * counts.sum() / K).nonzero().flatten()
                if len(dead):
                    new = _sample_rows(zf.detach(), len(dead), g)
                    codebook[dead] = new
                    mean_use = counts.sum() / K
                    if ema:
                        cluster[dead], embed_sum[dead] = mean_use, new * mean_use
                    else:
                        usage[dead] = mean_use
                    restarted = len(dead)

        m = {"step": step + 1, "loss": loss.item(), "recon": recon.item(), "l1": l1.item(), "l2": l2.item(),
             "grad": gl.item(), "commit": commit.item(), "codebook": cb_loss.item(),
             "usage": int((counts > 0).sum()), "restarted": restarted, "quantized": int(quantizing),
             "lr": opt.param_groups[0]["lr"]}
        history.append(m)
        if on_step is not None:
            on_step(step + 1, m)
    model.eval()
    tail = history[-max(1, steps // 10):]
    out = {k: sum(h[k] for h in tail) / len(tail) for k in ("loss", "recon", "l1", "l2", "grad", "commit")}
    out.update(evaluate(tok, data[:eval_images]))
    out.update(steps=steps, seconds=time.perf_counter() - t0)
    return out
