"""Process groups and model wrapping: one process, DDP, or FSDP2 (``torch.distributed.fsdp.fully_shard``).

Launched by ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment): NCCL on CUDA, gloo on CPU.
"""
from __future__ import annotations

import gc
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import AromniError


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "none"  # none | ddp | fsdp

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init(strategy: str, device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun; resolve ``auto`` to ddp (several ranks) or none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:  # one process: nothing to shard or synchronise, whatever the strategy
        return DistInfo(strategy="none")
    if strategy == "none":
        raise AromniError(f"launched on {world} ranks but train.strategy is none (use ddp or fsdp)")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    _init_group(device, rank, world)
    return DistInfo(rank, world, local, "ddp" if strategy == "auto" else strategy)


def _init_group(device: torch.device, rank: int, world: int) -> None:
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world,
                            device_id=device if device.type == "cuda" else None)


def local_device(device: torch.device) -> torch.device:
    """cuda -> cuda:LOCAL_RANK under torchrun."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shutdown() -> None:
    """Leave the process group: collect dropped models first, then wait for every rank, then destroy it.

    Sharded modules and their device mesh hold the process group in reference cycles. Left to the interpreter's
    finalisation, gloo's worker threads are torn down after the group and the process aborts ("terminate called
    without an active exception", SIGABRT) in a few runs out of a hundred.
    """
    if dist.is_initialized():
        gc.collect()
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def wrap(module: nn.Module, blocks: list[nn.Module], info: DistInfo, device: torch.device,
         param_dtype: torch.dtype | None = None) -> nn.Module:
    """DDP or FSDP2 around ``module``; ``blocks`` are sharded one by one (FSDP2), then the root."""
    if info.strategy == "ddp":
        import inspect

        from torch.nn.parallel import DistributedDataParallel as DDP

        # buffers (the frozen codebook) are identical on every rank: no per-forward broadcast
        sync_key = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                    else "broadcast_buffers")
        kw: dict[str, Any] = {sync_key: False}
        return DDP(module, device_ids=[device.index] if device.type == "cuda" else None, **kw)
    if info.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (info.world,))
        def policy(cast_inputs: bool):
            if not param_dtype:
                return MixedPrecisionPolicy()
            return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                        cast_forward_inputs=cast_inputs)

        for b in blocks:
            fully_shard(b, mesh=mesh, mp_policy=policy(True))
        # the root's inputs include the fp32 loss weights: keep them as they are
        fully_shard(module, mesh=mesh, mp_policy=policy(False))
        return module
    return module


def sync_context(wrapped: nn.Module, info: DistInfo, sync: bool):
    """Gradient sync only on the last micro-batch of an accumulation."""
    if info.strategy == "ddp" and not sync:
        return wrapped.no_sync()  # type: ignore[operator]  # DDP method, seen through nn.Module.__getattr__
    if info.strategy == "fsdp":
        wrapped.set_requires_gradient_sync(sync)  # type: ignore[operator]  # FSDPModule method
    return nullcontext()


def all_sum(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    """Sum python floats over ranks (fp64)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device, info: DistInfo) -> bool:
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()

