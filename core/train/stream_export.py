"""A safetensors file written tensor by tensor, so that a sharded model can be exported without ever holding
more than one full tensor: the header (names, dtypes, shapes, offsets) is known before any data is gathered.
"""
from __future__ import annotations

import json
import os
import struct

import torch

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


class SafetensorsStream:
    """``specs`` (name, dtype, shape) fix the layout; :meth:`write` then takes each tensor in that order.

    The file appears at ``path`` only after :meth:`close` (written to a temporary name, fsync'ed, renamed).
    """

    def __init__(self, path: str, specs: list[tuple[str, torch.dtype, tuple]], metadata: dict | None = None):
        header: dict = {}
        off = 0
        self.order = []
        for name, dtype, shape in specs:
            n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [off, off + n]}
            self.order.append((name, dtype, tuple(shape)))
            off += n
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.path, self.tmp = path, f"{path}.tmp-{os.getpid()}"
        self.f = open(self.tmp, "wb")
        self.f.write(struct.pack("<Q", len(raw)) + raw)
        self.i = 0

    def write(self, name: str, t: torch.Tensor) -> None:
        want, dtype, shape = self.order[self.i]
        if name != want or t.dtype != dtype or tuple(t.shape) != shape:
            raise ValueError(f"tensor {self.i}: got {name} {t.dtype} {tuple(t.shape)}, expected {want} {dtype} {shape}")
        t = t.detach().contiguous().cpu()
        if t.numel():
            # numpy declares ndarray.__buffer__ only for Python >= 3.12
            self.f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # type: ignore[arg-type]
        self.i += 1

    def close(self) -> str:
        if self.i != len(self.order):
            self.abort()
            raise ValueError(f"{self.path}: {len(self.order) - self.i} tensors were never written")
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.f.close()
        try:
            os.remove(self.tmp)
        except OSError:
            pass
