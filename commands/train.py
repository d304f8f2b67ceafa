"""`aromni train`."""
from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

import typer
from typing_extensions import Annotated

from aromni.commands._common import Json, Quiet, Threads, log


def run(
    config: Annotated[str, typer.Argument(help="Training config (YAML).", metavar="CONFIG.yaml")],
    overrides: Annotated[Optional[List[str]], typer.Argument(
        help="Dotted overrides, e.g. optim.lr=3e-4 train.max_steps=200 data.train.0.path=shards/", metavar="KEY=VALUE")
    ] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the newest checkpoint under out_dir/checkpoints (model, optimiser, "
                         "schedule, RNG and data position).")] = False,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the resolved config (YAML) on stdout and exit.")] = False,
    plan: Annotated[bool, typer.Option(
        "--plan", help="Print the per-rank memory plan (parameters, gradients, optimizer state, activations, "
                       "logits; full fine-tuning over --gpus ranks and LoRA rank 16 on one) and exit.")] = False,
    gpus: Annotated[int, typer.Option("--gpus", help="Ranks for --plan.", min=1)] = 1,
    gpu_memory: Annotated[str, typer.Option("--gpu-memory", help="Memory per GPU for --plan, e.g. 80GB.")] = "80GB",
    json_out: Json = False,
    quiet: Quiet = False,
    threads: Threads = None,
) -> None:
    """Train a model or a tokenizer from a YAML config (kind: lm | pretokenize | image_vq | codec | bpe).

    The resolved config is echoed on stderr and saved as OUT_DIR/config.yaml. Progress (tqdm) on stderr;
    metrics in OUT_DIR/metrics.jsonl. Ctrl-C or SIGTERM finishes the step, saves a checkpoint and exits
    (130 / 143); continue with --resume.

    \b
    Examples:
      aromni train tok.yaml                               # kind: pretokenize -> .npy shards
      aromni train lm.yaml optim.lr=3e-4 train.max_steps=2000
      aromni train lm.yaml --resume
      torchrun --nproc_per_node 8 -m aromni train lm.yaml train.strategy=fsdp
      aromni train lm.yaml --plan --gpus 8 --gpu-memory 80GB
    """
    from aromni.core.train.config import load_config

    cfg = load_config(config, overrides or [])  # config errors surface before torch is imported
    if print_config:
        sys.stdout.write(cfg.to_yaml())
        return
    if plan:
        from aromni.core.train.plan import parse_size, plan_run

        print(plan_run(cfg, gpus=gpus, gpu_memory=parse_size(gpu_memory)))
        return
    from aromni.core.train.stages import run as run_stage

    result = run_stage(cfg, resume=resume, quiet=quiet)
    if json_out and os.environ.get("RANK", "0") == "0":
        print(json.dumps(result, default=str))
    sig = result.get("interrupted")
    if (sig or result.get("paused")) and os.environ.get("RANK", "0") == "0":
        log(f"aromni train: {'stopped by ' + sig if sig else 'paused'}; continue with --resume")
    if sig:
        raise typer.Exit(130 if sig == "SIGINT" else 143)
