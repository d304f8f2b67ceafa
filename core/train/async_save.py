"""Sharded checkpoints written in the background (``checkpoint.async: true``).

``torch.distributed.checkpoint.async_save`` copies each rank's shards into CPU memory (the only part the step
loop waits for) and writes them from a thread, over a process group of its own so that its collectives never
interleave with the training step's. At most one save is in flight. The checkpoint is published (renamed into
place, named in ``latest``) by the main rank only after its save has finished: DCP's main rank writes the
``.metadata`` only once every rank has reported its files written, so a finished main rank means a complete
checkpoint, and until then the previous checkpoint stays the latest.
"""
from __future__ import annotations

from concurrent.futures import Future

from ..errors import CheckpointError
from . import checkpoint as ckpt


class BackgroundSave:
    """The one checkpoint being written in the background, if any (every rank holds one)."""

    def __init__(self, root: str, keep: int, main: bool):
        self.root, self.keep, self.main = root, keep, main
        self.group = None
        self.pending: tuple[Future, str, str] | None = None

    def start(self, state: dict, tmp: str, final: str) -> None:
        """Begin writing ``state`` (a DCP state dict) into ``tmp``; collective, like ``dcp.save``."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        self.wait()
        if self.group is None:
            self.group = dist.new_group(backend="gloo")  # collective: every rank saves at the same step
        fut = dcp.async_save(state, storage_writer=dcp.FileSystemWriter(tmp, sync_files=True),
                             process_group=self.group)
        if not isinstance(fut, Future):  # an AsyncSaveResponse (stagers that stage in the background)
            fut = fut.upload_completion
        self.pending = (fut, tmp, final)

    def poll(self) -> None:
        """Publish the checkpoint in flight if it has finished (called between steps)."""
        if self.pending is not None and self.pending[0].done():
            self.wait()

    def wait(self) -> None:
        """Wait for the checkpoint in flight (if any) and publish it."""
        if self.pending is None:
            return
        fut, tmp, final = self.pending
        self.pending = None
        try:
            fut.result()
        except Exception as e:  # DCP wraps per-rank failures in CheckpointException
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{final}: background save failed ({msg})") from None
        if self.main:
            ckpt.publish(self.root, tmp, final, self.keep)
