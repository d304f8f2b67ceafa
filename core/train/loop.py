"""The language-model trainer: weighted NTP + perceptual loss, AdamW, schedules, accumulation, DDP/FSDP2,
atomic resumable checkpoints, signals, validation, metrics and export.

Loss normalisation (``loss.normalize``):
- ``step`` (default): ``Σ ce·w / Σ w`` and ``Σ (proj(h) - e)² / n`` over the whole optimiser step, i.e.
  over all micro-batches and all ranks. The same global batch gives the same loss and gradients whatever
  the split into ranks and micro-batches.
- ``micro``: the reference trainer's: each micro-batch's weighted mean, averaged over micro-batches and ranks.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ..bundle import Omni
from ..device import auto_bf16, cpu_has_native_bf16, resolve_device
from ..errors import AromniError, CheckpointError
from ..model import Transformer
from . import checkpoint as ckpt
from . import dist as D
from .config import TrainConfig
from .data import Batcher, Item, Sample, SampleStream, make_source, reshard_positions
from .losses import image_positions, normalizer, ntp_sum, perceptual_sum, target_weights

CKPT_DIR = "checkpoints"
METRICS = "metrics.jsonl"


# ----------------------------------------------------------------------------------------------
# Model + projection as one module (so DDP/FSDP see one forward)
# ----------------------------------------------------------------------------------------------
class TrainModule(nn.Module):
    """The transformer plus the perceptual projection; ``forward`` returns (Σ ce·w, Σ squared error)."""

    def __init__(self, model: nn.Module, proj: nn.Linear | None, codebook: torch.Tensor | None, image_offset: int):
        super().__init__()
        self.model = model
        self.proj = proj
        if codebook is not None:
            self.register_buffer("codebook", codebook, persistent=False)
        else:
            self.codebook: torch.Tensor | None = None
        self.image_offset = image_offset

    def forward(self, tokens, targets, weights, image, positions=None, attn_mask=None):
        if self.proj is None:
            logits = self.model(tokens, positions=positions, attn_mask=attn_mask)
            return ntp_sum(logits, targets, weights), logits.new_zeros(())
        logits, hidden = self.model(tokens, positions=positions, attn_mask=attn_mask, return_hidden=True)
        pl, _ = perceptual_sum(hidden, tokens, image, self.proj, self.codebook, self.image_offset)
        return ntp_sum(logits, targets, weights), pl


def load_codebook(spec: str, image_tok) -> torch.Tensor:
    """The perceptual target table [K, C]: the image tokenizer's codebook, or a tensor file."""
    if spec == "image_tokenizer":
        if image_tok is None:
            raise AromniError("loss.perceptual_weight > 0 needs an image tokenizer (or loss.codebook: a tensor file)")
        return image_tok.codebook().detach().float().cpu()
    if not os.path.isfile(spec):
        raise AromniError(f"loss.codebook: {spec}: no such file")
    t: torch.Tensor | None
    try:
        if spec.endswith(".npy"):
            t = torch.from_numpy(np.load(spec))
        elif spec.endswith(".safetensors"):
            from safetensors.torch import load_file

            d = load_file(spec)
            t = next(iter(d.values())) if len(d) == 1 else d.get("weight")
        else:  # perception.ckpt-style: a tensor, or a state dict holding one
            obj = torch.load(spec, map_location="cpu", weights_only=True)
            t = obj if isinstance(obj, torch.Tensor) else obj.get("weight", next(iter(obj.values())))
    except Exception as e:
        raise AromniError(f"loss.codebook: {spec}: unreadable ({e})") from None
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        raise AromniError(f"loss.codebook: {spec}: expected one [codes, dim] tensor")
    return t.float()


# ----------------------------------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------------------------------
def lr_factor(step: int, max_steps: int, warmup: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr after ``step`` optimiser steps (HF convention: 0 at step 0 with warm-up)."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    decay = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def warmup_steps(cfg: TrainConfig) -> int:
    o = cfg.optim
    return o.warmup_steps if o.warmup_steps is not None else math.ceil(o.warmup_ratio * cfg.train.max_steps)


# ----------------------------------------------------------------------------------------------
# RNG state
# ----------------------------------------------------------------------------------------------
def rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the legacy global generator is always MT19937
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st: dict, device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(_tuples(st["python"]))
    n = st["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    step: int
    out_dir: str
    checkpoint: str | None = None
    bundle: str | None = None
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when stopped by a signal
    paused: bool = False  # stopped at train.stop_at, before max_steps
    last: dict = field(default_factory=dict)


class Trainer:
    def __init__(self, cfg: TrainConfig, omni: Omni, *, quiet: bool = False,
                 on_step: Callable[[dict], None] | None = None, source=None):
        """``source``: a :class:`~.shard_load.LazyState` when ``omni.model`` is None (the sharded path: the
        model is built on the meta device, sharded, then each rank reads its own rows from ``source``)."""
        self.cfg, self.omni, self.quiet, self.on_step = cfg, omni, quiet, on_step
        self.source = source
        dev = D.local_device(resolve_device(cfg.train.device))
        self.info = D.init(cfg.train.strategy, dev)
        self.device = dev
        if dev.type == "cpu" and cfg.train.release_memory:
            from .malloc import release_freed_tensors

            release_freed_tensors()
        self.vocab = omni.vocab
        self.stop_signal: int | None = None
        self.step = 0
        self._setup_precision()
        self._setup_model()
        self._setup_data()
        self._setup_optim()
        self.ckpt_root = os.path.join(cfg.out_dir, CKPT_DIR)
        self.background = None
        if cfg.checkpoint.async_:
            if self.info.strategy == "fsdp":
                from .async_save import BackgroundSave

                self.background = BackgroundSave(self.ckpt_root, cfg.checkpoint.keep, self.info.main)
            else:
                self.log("checkpoint.async applies to sharded checkpoints (train.strategy fsdp on several ranks); "
                         "this run saves synchronously")

    # -- setup ------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.info.main and not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def _setup_precision(self) -> None:
        p = self.cfg.train.precision
        bf16 = p == "bf16" or (p == "auto" and auto_bf16(self.device))
        if p == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
            self.log("warning: train.precision bf16 on a CPU without native bf16 (no avx512_bf16 / amx_bf16): "
                     "emulated, many times slower than fp32; precision auto picks fp32 here")
        self.log(f"precision {'bf16 autocast' if bf16 else 'fp32'} (train.precision {p})")
        self.bf16 = bf16
        use_autocast = bf16 and self.info.strategy != "fsdp"  # FSDP2 casts through its MixedPrecisionPolicy
        self.autocast = ((lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if use_autocast
                         else nullcontext)

    def _setup_model(self) -> None:
        cfg, omni = self.cfg, self.omni
        sharded = omni.model is None
        if sharded and self.info.strategy != "fsdp":
            raise AromniError("a model read shard by shard needs train.strategy fsdp on several ranks")
        if sharded:
            from ..convert import meta_model

            model = meta_model(self.source.cfg).train()
        else:
            model = omni.model.to(self.device, torch.float32).train()
        model.activation_checkpointing = cfg.model.activation_checkpointing
        self.lam = cfg.loss.perceptual_weight
        proj = codebook = None
        if self.lam > 0:
            codebook = load_codebook(cfg.loss.codebook, omni.image)
            if codebook.shape[0] < self.vocab.image_codes:
                raise AromniError(f"loss.codebook has {codebook.shape[0]} rows but the vocabulary has "
                                  f"{self.vocab.image_codes} image codes")
            proj_init = self._proj_init(model.cfg.dim, codebook.shape[1])
            if sharded:
                with torch.device("meta"):
                    proj = nn.Linear(model.cfg.dim, codebook.shape[1], bias=True)
            else:
                proj = nn.Linear(model.cfg.dim, codebook.shape[1], bias=True)
                proj.load_state_dict(proj_init)
                proj.to(self.device)
            proj.requires_grad_(cfg.loss.train_projection)
            codebook = codebook.to(self.device)
        self.code_dim = 0 if codebook is None else codebook.shape[1]
        self.lora = None
        if cfg.train.lora is not None:
            from . import lora

            if sharded or self.info.strategy == "fsdp":
                raise AromniError("train.lora trains on one device or with ddp (train.strategy none | ddp | auto)")
            self.lora = lora.check_spec(cfg.train.lora)
            n = lora.apply(model, self.lora, seed=cfg.seed + 2)
            self.log(f"LoRA: {n:,} adapter parameters (rank {self.lora['rank']}, {', '.join(self.lora['targets'])});"
                     f" {sum(p.numel() for p in model.parameters()) - n:,} base parameters frozen")
        if cfg.train.compile:
            for b in model.layers:
                b.compile()
        self.module = TrainModule(model, proj, codebook, self.vocab.image_offset)
        param_dtype = torch.bfloat16 if self.bf16 else None
        self.wrapped = D.wrap(self.module, list(model.layers), self.info, self.device, param_dtype)
        self.model = model
        if sharded:
            self._fill_shards(codebook, proj_init if proj is not None else None)

    def _proj_init(self, dim: int, code_dim: int) -> dict:
        """nn.Linear's default init of the perceptual projection, from our own generator (same on every rank)."""
        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        bound = 1 / math.sqrt(dim)
        w = torch.empty(code_dim, dim).uniform_(-bound, bound, generator=g)
        return {"weight": w, "bias": torch.empty(code_dim).uniform_(-bound, bound, generator=g)}

    def _fill_shards(self, codebook: torch.Tensor | None, proj_init: dict | None) -> None:
        """Materialise the sharded meta model on the device and read each rank's rows of the base weights."""
        from .shard_load import LazyState, fill_shards

        self.module.to_empty(device=self.device)
        fill_shards(self.module, self.source, prefix="model.", source=self.cfg.model.base or "model.config")
        if proj_init is not None:
            lazy = LazyState(self.source.cfg)
            for k, v in proj_init.items():
                lazy.add_full(k, v)
            fill_shards(self.module, lazy, prefix="proj.", source="loss projection")
            self.module.codebook = codebook  # to_empty replaced the buffer's storage
        self.model.reset_rope()

    def _prepare(self, s: Sample) -> Item:
        v, lc = self.vocab, self.cfg.loss
        V = self.model.cfg.vocab_size
        if len(s.ids) and (s.ids.min() < 0 or s.ids.max() >= V):
            bad = int(s.ids.max() if s.ids.max() >= V else s.ids.min())
            raise AromniError(f"a {s.task!r} sample holds token {bad}, outside the model's vocabulary (0..{V - 1}); "
                              f"was the data tokenised for another vocabulary layout?")
        lab = s.labels if s.labels is not None else s.ids
        w = target_weights(s.ids, s.labels, s.task, s.response_len, lc, eos=v.eos, ins=v.ins, res=v.res)
        if self.lam > 0:
            img = image_positions(s.ids, s.labels, s.task, lc, boi=v.boi, image_offset=v.image_offset,
                                  image_codes=v.image_codes, n_tokens=v.image_tokens)
        else:
            img = np.zeros(len(s.ids), dtype=bool)
        return Item(np.asarray(s.ids, dtype=np.int64), np.asarray(lab, dtype=np.int64), w, img)

    def _stream(self, specs: list, split: str, shuffle: int, name: str) -> SampleStream:
        dc = self.cfg.data
        builder = None
        if any(isinstance(s, dict) and s.get("type") == "manifest" for s in specs):
            from .examples import ExampleBuilder

            o = self.omni
            builder = ExampleBuilder(o.vocab, o.text, o.image, o.speech, o.prompts)
        sources = [make_source(s, builder, default_split=split) for s in specs]
        for src in sources:
            if getattr(src, "layout", None):  # shards remember the layout they were tokenised for
                self.vocab.check_compatible(src.layout, source=src.path)
        limit = self.seq_len if dc.pack else self.model.cfg.max_seq_len
        max_len = min(dc.max_len, limit) if dc.max_len else limit
        return SampleStream(sources, rank=self.info.rank, world=self.info.world, shuffle_buffer=shuffle,
                            seed=self.cfg.seed, min_len=dc.min_len, max_len=max_len, name=name)

    def _setup_data(self) -> None:
        dc = self.cfg.data
        self.seq_len = min(dc.seq_len or self.model.cfg.max_seq_len, self.model.cfg.max_seq_len)
        pad = dc.pad_id if dc.pad_id is not None else self.vocab.eos
        self.batcher = Batcher(self._stream(dc.train, "train", dc.shuffle_buffer, "training"), self._prepare,
                               dc.batch_size, pad, dc.pack, self.seq_len)
        self.heldout = None
        if dc.heldout:
            self.heldout = Batcher(self._stream(dc.heldout, "heldout", 0, "held-out"), self._prepare,
                                   dc.batch_size, pad, dc.pack, self.seq_len)

    def _setup_optim(self) -> None:
        o = self.cfg.optim
        params = [p for p in self.wrapped.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        other = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": other, "weight_decay": 0.0}]
        self.params = params
        try:  # the fused kernel is ~20x faster than the foreach path on CPU and faster on CUDA
            self.opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=True)
        except (RuntimeError, TypeError, ValueError):
            self.opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        warm, T = warmup_steps(self.cfg), self.cfg.train.max_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, T, warm, o.schedule, o.min_lr_ratio))

    # -- one step ---------------------------------------------------------------------------------
    def _micro(self, b) -> tuple[torch.Tensor, torch.Tensor]:
        b = b.to(self.device)
        with self.autocast():
            return self.wrapped(b.tokens, b.targets, b.weights, b.image, b.positions, b.attn_mask)

    def train_step(self) -> dict:
        cfg, info = self.cfg, self.info
        accum = cfg.optim.grad_accum
        batches = [next(self.batcher) for _ in range(accum)]
        wsums = [float(b.weights.sum()) for b in batches]
        ncounts = [float(b.image.sum()) * self.code_dim for b in batches]
        tokens = sum(b.n_tokens for b in batches)
        step_mode = cfg.loss.normalize == "step"
        if step_mode:
            W, N = D.all_sum([sum(wsums), sum(ncounts)], self.device, info)
            W, N = normalizer(W), normalizer(N)
        ntp_acc = torch.zeros((), device=self.device, dtype=torch.float64)
        pl_acc = torch.zeros_like(ntp_acc)
        for i, b in enumerate(batches):
            with D.sync_context(self.wrapped, info, sync=i == accum - 1):
                ntp, pl = self._micro(b)
                if step_mode:
                    loss = (ntp / W + self.lam * pl / N) * info.world
                    ntp_acc += ntp.detach().double() / W
                    pl_acc += pl.detach().double() / N
                else:
                    n_mean, p_mean = ntp / normalizer(wsums[i]), pl / normalizer(ncounts[i])
                    loss = (n_mean + self.lam * p_mean) / accum
                    ntp_acc += n_mean.detach().double() / accum
                    pl_acc += p_mean.detach().double() / accum
                loss.backward()
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        if hasattr(gnorm, "full_tensor"):
            gnorm = gnorm.full_tensor()
        lr = self.sched.get_last_lr()[0]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        ntp_v, pl_v, tok = D.all_sum([float(ntp_acc), float(pl_acc), float(tokens)], self.device, info)
        if not step_mode:  # mean over ranks of the per-rank means
            ntp_v, pl_v = ntp_v / info.world, pl_v / info.world
        rec = {"step": self.step, "loss": ntp_v + self.lam * pl_v, "ntp": ntp_v, "lr": lr,
               "grad_norm": float(gnorm), "tokens": int(tok)}
        if self.lam > 0:
            rec["pl"] = pl_v
        return rec

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Loss on ``train.eval_batches`` held-out micro-batches (the same ones every time)."""
        if self.heldout is None:
            raise AromniError("evaluate needs held-out data (data.heldout)")
        self.heldout.reset((0, 0))
        ntp = pl = W = N = 0.0
        self.wrapped.eval()
        for _ in range(self.cfg.train.eval_batches):
            b = next(self.heldout)
            n, p = self._micro(b)
            ntp, pl = ntp + float(n), pl + float(p)
            W, N = W + float(b.weights.sum()), N + float(b.image.sum()) * self.code_dim
        self.wrapped.train()
        ntp, pl, W, N = D.all_sum([ntp, pl, W, N], self.device, self.info)
        out = {"val_ntp": ntp / normalizer(W)}
        if self.lam > 0:
            out["val_pl"] = pl / normalizer(N)
        out["val_loss"] = out["val_ntp"] + self.lam * out.get("val_pl", 0.0)
        return out

    # -- checkpoints ------------------------------------------------------------------------------
    def _full_state(self) -> tuple[dict, dict]:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.wrapped, options=opts), get_optimizer_state_dict(self.wrapped, self.opt,
                                                                                           options=opts)

    def _save_sharded(self) -> str:
        """Every rank writes its own shards (torch.distributed.checkpoint) plus its RNG state and data position."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.wrapped, self.opt)
        mine = {"rng": rng_state(self.device), "data": list(self.batcher.pos)}
        info = self.info

        def write_small(tmp: str) -> None:
            ckpt.write_file(os.path.join(tmp, f"rank-{info.rank:05d}.pt"), mine)
            if info.main:
                ckpt.write_file(os.path.join(tmp, "trainer.pt"), {
                    "step": self.step, "scheduler": self.sched.state_dict(), "world": info.world})
                ckpt.write_file(os.path.join(tmp, "config.yaml"), self.cfg.to_yaml())

        def write(tmp: str) -> None:
            dcp.save({"model": msd, "optim": osd}, storage_writer=dcp.FileSystemWriter(tmp, sync_files=True))
            write_small(tmp)

        if self.background is not None:  # published once written (poll, finish_saves)
            self.background.wait()
            tmp, final = ckpt.begin_sharded(self.ckpt_root, self.step, main=info.main,
                                            barrier=lambda: D.barrier(info))
            write_small(tmp)
            self.background.start({"model": msd, "optim": osd}, tmp, final)
            return final
        return ckpt.save_sharded(self.ckpt_root, self.step, write, main=info.main,
                                 barrier=lambda: D.barrier(info), keep=self.cfg.checkpoint.keep)

    def _resume_sharded(self, path: str) -> dict:
        """Model and optimizer state from a sharded checkpoint, resharded onto this run's ranks."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        tr = ckpt.read_file(path, "trainer.pt")
        msd, osd = get_state_dict(self.wrapped, self.opt)
        state: dict[str, Any] = {"model": msd, "optim": osd}
        try:
            dcp.load(state, storage_reader=dcp.FileSystemReader(path), no_dist=not self.info.enabled)
            set_state_dict(self.wrapped, self.opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        except Exception as e:  # DCP wraps per-rank failures in CheckpointException
            raise CheckpointError(f"{path}: does not fit this model/loss configuration "
                                  f"({str(e).strip().splitlines()[0][:300]})") from None
        old = int(tr["world"])
        ranks = [ckpt.read_file(path, f"rank-{r:05d}.pt") for r in range(old)]
        tr["data"] = reshard_positions([r["data"] for r in ranks], self.info.world)
        # a new rank takes an old rank's RNG stream (only dropout draws from it during training)
        tr["rng"] = [ranks[r % old]["rng"] for r in range(self.info.world)]
        if old != self.info.world:
            self.log(f"resharded a {old}-rank checkpoint onto {self.info.world} rank(s)")
        return tr

    def save(self) -> str | None:
        """A checkpoint of the current step (collective: every rank calls it)."""
        if self.info.strategy == "fsdp":
            return self._save_sharded()
        msd, osd = self._full_state()
        rngs = D.gather_objects(rng_state(self.device), self.info)
        data = D.gather_objects(list(self.batcher.pos), self.info)
        path = None
        if self.info.main:
            model_sd = {k[len("model."):]: v for k, v in msd.items() if k.startswith("model.")}
            if self.lora is not None:  # the frozen base comes from model.base: only the adapters are saved
                model_sd = {k: v for k, v in model_sd.items() if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b")}
            proj_sd = {k: v for k, v in msd.items() if k.startswith("proj.")}
            trainer = {"step": self.step, "optimizer": osd, "scheduler": self.sched.state_dict(), "proj": proj_sd,
                       "rng": rngs, "data": data, "world": self.info.world}
            path = ckpt.save_checkpoint(self.ckpt_root, self.step, {
                "model.safetensors": model_sd, "trainer.pt": trainer, "config.yaml": self.cfg.to_yaml()},
                keep=self.cfg.checkpoint.keep)
        D.barrier(self.info)
        return path

    def finish_saves(self) -> None:
        """Wait for a checkpoint being written in the background and publish it."""
        if self.background is not None:
            self.background.wait()

    def resume(self, path: str) -> None:
        """Continue from checkpoint ``path``: model, optimizer, schedule, RNG and data position."""
        if ckpt.is_sharded(path):
            tr = self._resume_sharded(path)
        else:
            tr = self._resume_full(path)
        self.sched.load_state_dict(tr["scheduler"])
        self.batcher.reset(tuple(tr["data"][self.info.rank]))
        set_rng_state(tr["rng"][self.info.rank], self.device)
        self.step = int(tr["step"])

    def _resume_full(self, path: str) -> dict:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        model_sd = ckpt.read_file(path, "model.safetensors")
        tr = ckpt.read_file(path, "trainer.pt")
        if tr.get("world") != self.info.world:
            raise CheckpointError(f"{path}: written by {tr.get('world')} rank(s); resume with the same number "
                                  f"(this run has {self.info.world}) so that every rank finds its data position")
        full = {"model." + k: v for k, v in model_sd.items()}
        full.update(tr.get("proj", {}))
        opts = StateDictOptions(full_state_dict=True, strict=self.lora is None)
        try:
            set_model_state_dict(self.wrapped, full, options=opts)
            set_optimizer_state_dict(self.wrapped, self.opt, tr["optimizer"], options=opts)
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: does not fit this model/loss configuration "
                                  f"({str(e).splitlines()[0]})") from None
        return tr

    def _stream_weights(self, path: str | None) -> None:
        """The sharded model's weights, gathered one tensor at a time (collective) and written by the main rank
        into ``path`` (other ranks pass None): no rank holds more than one full tensor above its shards."""
        from .stream_export import SafetensorsStream

        state = self.model.state_dict()  # DTensors: this rank's shards
        w = None
        if path is not None:
            from ..bundle import FORMAT

            w = SafetensorsStream(path, [(k, v.dtype, tuple(v.shape)) for k, v in state.items()], {"format": FORMAT})
        try:
            for k, v in state.items():
                full = v.full_tensor() if hasattr(v, "full_tensor") else v
                if w is not None:
                    w.write(k, full)
                del full
        except BaseException:
            if w is not None:
                w.abort()
            raise
        if w is not None:
            w.close()

    def _bundle_omni(self, model: Transformer) -> Omni:
        o = self.omni
        family = o.family if self.cfg.model.base else self.cfg.model.family
        return Omni(model=model, vocab=o.vocab, family=family, text=o.text, image=o.image, speech=o.speech,
                    prompts=o.prompts)

    def _save_adapter(self, out: str) -> None:
        """``out/adapter.safetensors`` (the adapters alone) and ``out/adapter.json`` (rank, alpha, targets)."""
        from . import lora

        assert self.lora is not None  # only LoRA runs save adapters
        os.makedirs(out, exist_ok=True)
        ckpt.write_file(os.path.join(out, "adapter.safetensors"), lora.adapter_state(self.model))
        meta = {**self.lora, "base": self.cfg.model.base}
        ckpt.write_text_atomic(os.path.join(out, "adapter.json"), json.dumps(meta))

    def export(self, path: str | None) -> str | None:
        """``out_dir/bundle`` (and ``out_dir/hf``) from checkpoint ``path``: the model, vocabulary and tokenizers.

        ``path`` is what :meth:`save` returned: None on ranks other than the main one.

        Collective under FSDP: the bundle's weights are streamed from the shards, tensor by tensor.
        """
        c = self.cfg.checkpoint
        if not (c.export_bundle or c.export_hf):
            return None
        from ..bundle import save_bundle
        from ..loading import load_checkpoint, load_state_into

        out = os.path.join(self.cfg.out_dir, "bundle" if c.export_bundle else ".bundle-for-hf")
        if self.info.strategy == "fsdp":
            if self.info.main:
                save_bundle(self._bundle_omni(self.model), out, write_weights=self._stream_weights)
            else:
                self._stream_weights(None)
            if not (self.info.main and c.export_hf):
                return out if self.info.main else None
            # the transformers writer takes a whole model: read (memory-mapped) from the streamed bundle
            model = load_checkpoint(out).model
            assert model is not None  # model=True
            if not c.export_bundle:
                import shutil

                shutil.rmtree(out, ignore_errors=True)
        elif not self.info.main:
            return None
        else:
            assert path is not None  # the main rank's save() returns its checkpoint
            if self.lora is not None:  # the live model is the final checkpoint's: adapters folded in
                from . import lora

                self._save_adapter(os.path.join(self.cfg.out_dir, "adapter"))
                sd = lora.merged_state(self.model)
            else:
                sd = ckpt.read_file(path, "model.safetensors")
            model = load_state_into(self.model.cfg, sd, device="cpu", dtype=torch.float32, source=path)
            if c.export_bundle:
                save_bundle(self._bundle_omni(model), out)
        o = self.omni
        if c.export_hf:
            try:
                from ..export import export_hf
            except ImportError:
                from ..export import export_hf
            export_hf(model, os.path.join(self.cfg.out_dir, "hf"), fmt="hf", layout=o.vocab, family=o.family)
        return out if c.export_bundle else None

    # -- signals ----------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.stop_signal = signum
        self.log(f"\n{signal.Signals(signum).name}: finishing this step, saving a checkpoint, then exiting "
                 f"(Ctrl-C again to abort without saving)")

    def _install_signals(self) -> dict:
        old = {}
        if hasattr(signal, "SIGTERM"):
            try:
                for s in (signal.SIGINT, signal.SIGTERM):
                    old[s] = signal.signal(s, self._on_signal)
            except ValueError:  # not the main thread
                pass
        return old

    # -- the loop ---------------------------------------------------------------------------------
    def _metrics(self, rec: dict) -> None:
        if not self.info.main:
            return
        with open(os.path.join(self.cfg.out_dir, METRICS), "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def _trim_metrics(self) -> None:
        """After a resume, forget metrics of steps past the checkpoint (they will be redone)."""
        fn = os.path.join(self.cfg.out_dir, METRICS)
        if not self.info.main or not os.path.isfile(fn):
            return
        with open(fn, encoding="utf-8") as f:
            keep = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
        ckpt.write_text_atomic(fn, "".join(keep))

    def fit(self, resume: str | None = None) -> TrainResult:
        cfg, info = self.cfg, self.info
        os.makedirs(cfg.out_dir, exist_ok=True)
        if resume:
            self.resume(resume)
            self._trim_metrics()
            self.log(f"resumed from {resume} at step {self.step}")
        elif info.main:
            fn = os.path.join(cfg.out_dir, METRICS)
            if os.path.exists(fn):
                os.remove(fn)
        D.barrier(info)
        old = self._install_signals()
        bar = None
        if info.main and not self.quiet:
            from tqdm import tqdm

            bar = tqdm(total=cfg.train.max_steps, initial=self.step, file=sys.stderr, unit="step", dynamic_ncols=True,
                       desc="train")
        last: dict = {}
        path = None
        saved_at = -1
        end = min(cfg.train.max_steps, cfg.train.stop_at or cfg.train.max_steps)
        try:
            while self.step < end:
                t0 = time.perf_counter()
                rec = self.train_step()
                dt = time.perf_counter() - t0
                rec["tokens_per_s"] = rec["tokens"] / max(dt, 1e-9)
                rec["time"] = round(time.time(), 3)
                final = self.step >= cfg.train.max_steps
                if self.heldout is not None and ((cfg.train.eval_every and self.step % cfg.train.eval_every == 0)
                                                 or final):
                    rec.update(self.evaluate())
                last = rec
                if self.step % cfg.train.log_every == 0 or final or "val_loss" in rec:
                    self._metrics(rec)
                if bar is not None:
                    bar.update(1)
                    post = {"loss": f"{rec['loss']:.4f}", "tok/s": f"{rec['tokens_per_s']:.0f}"}
                    if "val_loss" in rec:
                        post["val"] = f"{rec['val_loss']:.4f}"
                    bar.set_postfix(post, refresh=False)
                if self.on_step is not None:
                    self.on_step(rec)
                stop = D.any_rank(self.stop_signal is not None, self.device, info)
                if (cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0) or final or stop \
                        or self.step >= end:
                    path = self.save()
                    saved_at = self.step
                if self.background is not None:
                    self.background.poll()
                if stop:
                    break
        finally:
            if bar is not None:
                bar.close()
            for s, h in old.items():
                signal.signal(s, h)
        if saved_at != self.step:
            path = self.save()
        self.finish_saves()
        res = TrainResult(self.step, cfg.out_dir, path, last=last)
        if self.stop_signal is not None:
            res.interrupted = signal.Signals(self.stop_signal).name
            self.log(f"stopped at step {self.step}; checkpoint {path}; resume to continue")
        elif self.step < cfg.train.max_steps:
            res.paused = True
            self.log(f"paused at step {self.step} (train.stop_at) of {cfg.train.max_steps}; checkpoint {path}; "
                     "resume to continue")
        else:
            res.bundle = self.export(path)
        D.barrier(info)
        return res
