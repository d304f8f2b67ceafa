"""Atomic training checkpoints under ``OUT/checkpoints``: ``step-NNNNNNNN/`` directories plus a ``latest`` pointer.

Two kinds: one process's files (``model.safetensors``, ``trainer.pt``), or a sharded checkpoint written by
every rank through torch.distributed.checkpoint (``.metadata`` + one ``.distcp`` file per rank, plus each
rank's ``rank-NNNNN.pt`` with its RNG state and data position); both are published the same way.

A checkpoint is written into a hidden temporary directory (each file fsync'ed), renamed into place in one
step, and only then named in ``latest``. A crash at any point leaves the previous checkpoint intact;
leftovers are ignored and removed by the next save. Only the newest ``keep`` checkpoints are kept.
"""
from __future__ import annotations

import os
import re
import shutil
from typing import Callable

import torch

from ..errors import CheckpointError

LATEST = "latest"
STEP_RE = re.compile(r"step-(\d{8})")
TMP_PREFIX = ".tmp-"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write(path: str, obj) -> None:
    """One file, by extension: .safetensors (dict of tensors), .pt (torch.save), anything else (text)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in obj.items()}, path)
    elif path.endswith(".pt"):
        torch.save(obj, path)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(obj)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_file(path: str, obj) -> None:
    """One checkpoint file (by extension, as in a checkpoint), fsync'ed."""
    _write(path, obj)


def write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def save_checkpoint(root: str, step: int, files: dict, keep: int = 3) -> str:
    """Write ``files`` (name -> object) as checkpoint ``step`` under ``root``; returns its directory."""
    os.makedirs(root, exist_ok=True)
    clean_partial(root)
    final = os.path.join(root, step_name(step))
    tmp = os.path.join(root, f"{TMP_PREFIX}{step_name(step)}-{os.getpid()}")
    os.makedirs(tmp)
    for name, obj in files.items():
        _write(os.path.join(tmp, name), obj)
    publish(root, tmp, final, keep)
    return final


def save_sharded(root: str, step: int, write: Callable[[str], None], *, main: bool, barrier: Callable[[], None],
                 keep: int = 3) -> str:
    """A checkpoint written by every rank at once (collective: every rank calls it).

    ``write(tmp)`` writes this rank's files into the shared temporary directory. Only when every rank is done
    does the main rank rename it into place and point ``latest`` at it, so a kill at any moment leaves the
    previous checkpoint the latest complete one.
    """
    tmp, final = begin_sharded(root, step, main=main, barrier=barrier)
    write(tmp)
    barrier()
    if main:
        publish(root, tmp, final, keep)
    barrier()
    return final


def begin_sharded(root: str, step: int, *, main: bool, barrier: Callable[[], None]) -> tuple[str, str]:
    """(temporary, final) directory of sharded checkpoint ``step``; the temporary one exists on return
    (collective). Publish it with :func:`publish` once every rank has written its files."""
    final = os.path.join(root, step_name(step))
    tmp = os.path.join(root, f"{TMP_PREFIX}{step_name(step)}")
    if main:
        os.makedirs(root, exist_ok=True)
        clean_partial(root)
        os.makedirs(tmp)
    barrier()
    return tmp, final


def publish(root: str, tmp: str, final: str, keep: int) -> None:
    """Rename a completely written temporary checkpoint into place, name it in ``latest``, keep the newest."""
    for name in os.listdir(tmp):
        if os.path.isdir(os.path.join(tmp, name)):
            _fsync_dir(os.path.join(tmp, name))
    _fsync_dir(tmp)
    if os.path.isdir(final):  # the same step saved again (e.g. interrupted right after a periodic save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    write_text_atomic(os.path.join(root, LATEST), os.path.basename(final) + "\n")
    for _, old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def is_sharded(ckpt: str) -> bool:
    """A checkpoint written by torch.distributed.checkpoint (one file per rank plus ``.metadata``)."""
    return os.path.isfile(os.path.join(ckpt, ".metadata"))


def clean_partial(root: str) -> None:
    """Remove leftovers of interrupted saves."""
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        if name.startswith(TMP_PREFIX):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        elif name.startswith(LATEST + ".tmp-"):
            try:
                os.remove(os.path.join(root, name))
            except OSError:
                pass


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """Complete checkpoints under ``root``, oldest first."""
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        m = STEP_RE.fullmatch(name)
        if m and os.path.isdir(os.path.join(root, name)):
            out.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(out)


def latest_checkpoint(root: str) -> str | None:
    """The checkpoint named by ``latest`` (or, if that is gone, the newest complete one)."""
    try:
        with open(os.path.join(root, LATEST), encoding="utf-8") as f:
            name = f.read().strip()
        if STEP_RE.fullmatch(name) and os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    except OSError:
        pass
    ckpts = list_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def read_file(ckpt: str, name: str):
    """Load one file of a checkpoint (.safetensors -> dict of tensors, .pt -> object, else text)."""
    path = os.path.join(ckpt, name)
    if not os.path.isfile(path):
        raise CheckpointError(f"{ckpt}: {name} is missing (not a training checkpoint?)")
    try:
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        if name.endswith(".pt"):
            return torch.load(path, map_location="cpu", weights_only=True)
        with open(path, encoding="utf-8") as f:
            return f.read()
    except CheckpointError:
        raise
    except Exception as e:  # torch / safetensors raise many types for damaged files
        raise CheckpointError(f"{path}: unreadable ({e})") from None
