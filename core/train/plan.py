"""A memory plan for a training run: per-rank bytes of parameters, gradients, optimizer state, activations and
logits, for full fine-tuning (sharded over ``gpus`` ranks by FSDP2) and for LoRA on one device.

Counting rules (AdamW, FSDP2 with fp32 master weights):
- full: parameters, gradients (fp32) and AdamW's two moments (fp32) are split over the ranks; during the
  forward/backward one block's parameters are gathered unsharded in the compute dtype (two with prefetch).
- LoRA: the frozen base in fp32 (as the trainer holds it) on one device; only the adapters carry gradients and
  AdamW state.
- activations per layer and token (compute dtype): the block's saved tensors, about ``10*dim + 3*kv + 4*ffn``
  values (SDPA keeps no attention matrix); with activation checkpointing only each block's input is kept, plus
  one block's full set while it is recomputed.
- logits: fp32 logits plus their gradient, ``2 * 4 * batch * seq * vocab`` bytes (plus a compute-dtype copy).
- the total is the step's peak, not the sum of the rows: the backward pass frees activations while it allocates
  gradients, so the peak is parameters + optimizer state + gathered blocks plus the larger of activations +
  logits (end of the forward pass) and gradients + one block's backward working set (end of the backward pass:
  that block's activations, recomputed under checkpointing, and their gradients; under FSDP also its unsharded
  fp32 gradient before the reduce-scatter). With ``grad_accum`` > 1 the gradients are held while the next micro-
  batch's activations grow, so both count. Validated within 15 % against the peak RSS of CPU training steps
  (benchmarks/bench_train_plan.py, tests/test_plan.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..model import ModelConfig

GiB = 2**30
LORA_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


@dataclass
class Plan:
    mode: str  # "full (FSDP over N)" | "lora"
    rows: dict  # name -> bytes per rank
    gpu_memory: float  # bytes
    alternative: str = ""  # the row not counted in the total (the other activation-checkpointing setting)
    backward_block: int = 0  # one block's backward working set (live at the end of the backward pass)
    grads_with_activations: bool = False  # gradient accumulation: held gradients meet the next activations

    @property
    def total(self) -> int:
        """The step's peak (see the module docstring)."""
        counted = {k: v for k, v in self.rows.items() if k != self.alternative}
        grads = sum(v for k, v in counted.items() if k.startswith("gradients"))
        forward = sum(v for k, v in counted.items() if k.startswith(("activations", "logits")))
        state = sum(counted.values()) - grads - forward
        if self.grads_with_activations:
            return state + grads + forward
        return state + max(forward, grads + self.backward_block)

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_memory


def n_params(cfg: ModelConfig) -> int:
    """Parameters of the model ``cfg`` builds (counted on the meta device)."""
    from ..convert import meta_model

    return sum(p.numel() for p in meta_model(cfg).parameters())


def _lora_params(cfg: ModelConfig, rank: int, targets) -> int:
    kv = cfg.n_kv_heads * cfg.head_dim
    shapes = {"wq": (cfg.dim, cfg.dim), "wk": (cfg.dim, kv), "wv": (cfg.dim, kv), "wo": (cfg.dim, cfg.dim),
              "w1": (cfg.dim, cfg.intermediate_size), "w3": (cfg.dim, cfg.intermediate_size),
              "w2": (cfg.intermediate_size, cfg.dim)}
    return cfg.n_layers * sum(rank * (i + o) for t, (i, o) in shapes.items() if t in targets)


def plan(cfg: ModelConfig, *, batch: int, seq: int, gpus: int = 1, gpu_memory: float = 80 * GiB,
         bf16: bool = True, checkpointing: bool = False, lora_rank: int | None = None,
         lora_targets=LORA_TARGETS, grad_accum: int = 1) -> Plan:
    """Per-rank memory of one training step (see the module docstring for what is counted)."""
    P = n_params(cfg)
    cb = 2 if bf16 else 4  # compute dtype bytes
    kv = cfg.n_kv_heads * cfg.head_dim
    per_layer = batch * seq * (10 * cfg.dim + 3 * kv + 4 * cfg.intermediate_size) * cb
    inputs = batch * seq * cfg.dim * cb * cfg.n_layers
    acts_full = per_layer * cfg.n_layers
    acts_ckpt = inputs + per_layer
    logits = batch * seq * cfg.vocab_size * (8 + cb)
    block = (P - 2 * cfg.vocab_size * cfg.dim) // max(1, cfg.n_layers)
    rows: dict[str, int] = {}
    if lora_rank:
        A = _lora_params(cfg, lora_rank, lora_targets)
        rows["parameters (frozen base, fp32)"] = P * 4
        rows["parameters (adapters, fp32)"] = A * 4
        rows["gradients (adapters)"] = A * 4
        rows["optimizer state (adapters)"] = A * 8
        mode = f"lora (rank {lora_rank}, 1 device)"
    else:
        rows["parameters (fp32 shards)"] = P * 4 // gpus
        if gpus > 1:
            rows["gathered blocks (compute dtype)"] = 2 * block * cb
        rows["gradients (fp32 shards)"] = P * 4 // gpus
        rows["optimizer state (AdamW, fp32)"] = P * 8 // gpus
        mode = f"full (FSDP over {gpus})" if gpus > 1 else "full (1 device)"
    used, other = ("with", "without") if checkpointing else ("without", "with")
    rows[f"activations ({used} checkpointing)"] = acts_ckpt if checkpointing else acts_full
    rows["logits + grad"] = logits
    alt = f"(alternative: {other} checkpointing)"
    rows[alt] = acts_full if checkpointing else acts_ckpt
    backward_block = 2 * per_layer + (block * 4 if gpus > 1 and not lora_rank else 0)
    return Plan(mode, rows, gpu_memory, alt, backward_block=backward_block, grads_with_activations=grad_accum > 1)


def format_plan(p: Plan, cfg: ModelConfig, batch: int, seq: int) -> str:
    lines = [f"{p.mode}: {n_params(cfg) / 1e9:.2f}B parameters, batch {batch} x seq {seq}, per rank:"]
    for k, v in p.rows.items():
        if k != p.alternative:
            lines.append(f"  {k:<40} {v / GiB:8.2f} GiB")
    verdict = "fits" if p.fits else "does NOT fit"
    lines.append(f"  {'peak (not the sum: see below)':<40} {p.total / GiB:8.2f} GiB of {p.gpu_memory / GiB:.0f} GiB: "
                 f"{verdict}")
    lines.append(f"  {'activations ' + p.alternative:<40} {p.rows[p.alternative] / GiB:8.2f} GiB")
    if p.grads_with_activations:
        lines.append("  peak: every row (gradients are held while the next micro-batch's activations grow)")
    else:
        lines.append("  peak: parameters + gathered blocks + optimizer state + the larger of activations + logits "
                     "(end of forward)\n        and gradients + one block's activations and their gradients "
                     "(end of backward)")
    return "\n".join(lines)


def parse_size(text: str) -> float:
    """``80GB`` / ``80GiB`` / ``24g`` -> bytes (GB read as GiB, as GPU memory is quoted)."""
    import re

    from ..errors import AromniError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([gGmMtT]?)(?:i?[bB])?\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise AromniError(f"gpu memory must be a size such as 80GB (got {text!r})")
    scale = {"": GiB, "g": GiB, "m": 2**20, "t": 2**40}[m.group(2).lower()]
    return float(m.group(1)) * scale


def plan_run(cfg, gpus: int = 1, gpu_memory: float = 80 * GiB, lora_rank: int = 16) -> str:
    """The plan of a ``kind: lm`` training config: full fine-tuning over ``gpus`` ranks, and LoRA on one."""
    from ..errors import AromniError

    if cfg.kind != "lm":
        raise AromniError(f"a memory plan applies to kind lm (this config is kind {cfg.kind})")
    if gpus < 1:
        raise AromniError(f"gpus must be >= 1 (got {gpus})")
    if cfg.model.base:
        from .shard_load import open_lazy

        mc = open_lazy(cfg.model.base).cfg
    else:
        from .resolve import fresh_config, load_tokenizers

        mc = fresh_config(cfg.model, load_tokenizers(cfg.model.tokenizers))[0]
    batch = cfg.data.batch_size
    seq = min(cfg.data.seq_len or mc.max_seq_len, mc.max_seq_len)
    kw = {"batch": batch, "seq": seq, "gpu_memory": gpu_memory, "bf16": cfg.train.precision != "fp32",
          "checkpointing": cfg.model.activation_checkpointing, "grad_accum": cfg.optim.grad_accum}
    return "\n".join([format_plan(plan(mc, gpus=gpus, **kw), mc, batch, seq),
                      format_plan(plan(mc, gpus=1, lora_rank=lora_rank, **kw), mc, batch, seq)])
