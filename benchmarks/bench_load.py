"""Checkpoint load time and peak memory for 7B-shaped checkpoints.

Writes a synthetic checkpoint with the Chameleon/AR-Omni 7B shapes (``--layers`` fewer blocks to fit small
machines: the 7B is 14 GB in bf16, 28 GB in fp32), in the native bundle, Meta ``consolidated.pth`` and mainline
transformers layouts, then loads each in a fresh process per target dtype and reports wall time and peak RSS.

    python benchmarks/bench_load.py --layers 4                     # ~1.35B params, 2.7 GB per bf16 file
    python benchmarks/bench_load.py --layers 32 --formats bundle --dtypes bf16   # the real size

Peak RSS counts the file pages a process has touched through its memory maps. Loading in the stored dtype
on CPU copies nothing (parameters stay mapped until used); ``--touch`` reads every weight once after loading
to show the resident size of a model that has run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import torch

ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_mb() -> float:
    # VmHWM: this process image's peak RSS (ru_maxrss would carry the parent's peak over fork+exec)
    return _status_mb("VmHWM")


def write_safetensors_streaming(path: str, shapes: dict[str, tuple], dtype: torch.dtype, seed: int = 0) -> None:
    """A safetensors file written one random tensor at a time (never the whole model in memory)."""
    es = torch.tensor([], dtype=dtype).element_size()
    header, off = {}, 0
    for k, s in shapes.items():
        n = es
        for d in s:
            n *= d
        header[k] = {"dtype": ST_DTYPES[dtype], "shape": list(s), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    # random values from a 16 MiB pool, written in pool-sized chunks (values do not matter to loading)
    g = torch.Generator().manual_seed(seed)
    pool = (torch.randn(2**22 + 4099, generator=g) * 0.02).to(dtype).view(torch.uint8).numpy()
    chunk = 2**22 * es
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for i, (k, v) in enumerate(header.items()):
            if k == "__metadata__":
                continue
            n = v["data_offsets"][1] - v["data_offsets"][0]
            start = (i * 2 * es) % (4099 * es)  # a different slice of the pool per tensor
            while n > 0:
                m = min(n, chunk)
                f.write(pool[start:start + m].tobytes())
                n -= m


def make_checkpoints(root: str, layers: int, file_dtype: torch.dtype, formats: list[str]) -> dict[str, str]:
    from aromni.core import convert, export
    from aromni.core.bundle import BUNDLE_FILE, FORMAT
    from aromni.core.loading import read_safetensors
    from aromni.core.model import get_config
    from aromni.core.vocab import arom_layout

    cfg = get_config("7b", n_layers=layers)
    paths = {}
    bundle = os.path.join(root, "bundle")
    os.makedirs(bundle, exist_ok=True)
    t = time.time()
    write_safetensors_streaming(os.path.join(bundle, "model.safetensors"), convert.expected_shapes("aromni", cfg),
                                file_dtype)
    with open(os.path.join(bundle, BUNDLE_FILE), "w") as f:
        json.dump({"format": FORMAT, "version": 1, "family": "ar-omni", "model": cfg.to_dict(),
                   "vocab": arom_layout().to_dict(), "prompts": {}}, f)
    print(f"wrote bundle in {time.time() - t:.1f}s", file=sys.stderr)
    paths["bundle"] = bundle
    state = read_safetensors(os.path.join(bundle, "model.safetensors"))  # mapped, not copied
    if "meta" in formats:
        t = time.time()
        d = os.path.join(root, "meta")
        os.makedirs(d, exist_ok=True)
        torch.save(convert.from_aromni(state, "meta", cfg), os.path.join(d, "consolidated.pth"))
        with open(os.path.join(d, "params.json"), "w") as f:
            json.dump({"model": convert.meta_params(cfg)}, f)
        print(f"wrote meta in {time.time() - t:.1f}s", file=sys.stderr)
        paths["meta"] = d
    if "hf" in formats:
        t = time.time()
        d = os.path.join(root, "hf")
        os.makedirs(d, exist_ok=True)
        export.write_safetensors(convert.from_aromni(state, "hf", cfg), d, 5 * 2**30)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(export.hf_config(cfg, "hf", arom_layout(), vocabulary_map={}, dtype=file_dtype), f)
        print(f"wrote hf in {time.time() - t:.1f}s", file=sys.stderr)
        paths["hf"] = d
    del state
    return {k: v for k, v in paths.items() if k in formats}


def child(path: str, dtype: str, touch: bool) -> None:
    from aromni.core import api

    base = rss_mb()
    t = time.perf_counter()
    omni = api.load(path, device="cpu", dtype=dtype, tokenizers=False)
    load_s = time.perf_counter() - t
    res = {"load_s": round(load_s, 2), "rss_base_mb": round(base), "rss_after_load_mb": round(rss_mb()),
           "peak_load_mb": round(peak_mb())}
    n_bytes = sum(p.numel() * p.element_size() for p in omni.model.parameters())
    res["model_mb"] = round(n_bytes / 2**20)
    if touch:
        t = time.perf_counter()
        with torch.no_grad():
            for p in omni.model.parameters():
                p.sum()  # reads every page, no temporary copy
        res["touch_s"] = round(time.perf_counter() - t, 2)
        res["rss_after_touch_mb"] = round(rss_mb())
        res["peak_total_mb"] = round(peak_mb())
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4, help="transformer blocks (32 = the full 7B)")
    ap.add_argument("--file-dtype", default="bf16", choices=DTYPES)
    ap.add_argument("--dtypes", default="fp32,bf16,fp16", help="target dtypes to load into")
    ap.add_argument("--formats", default="bundle,meta,hf", help="bundle, meta, hf")
    ap.add_argument("--dir", default=None, help="where to write the checkpoints (default: a temp dir, removed)")
    ap.add_argument("--touch", action="store_true", help="also read every weight once after loading")
    ap.add_argument("--child", nargs=2, metavar=("PATH", "DTYPE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.touch)
        return
    formats = a.formats.split(",")
    root = a.dir or tempfile.mkdtemp(prefix="aromni-bench-load-")
    try:
        paths = make_checkpoints(root, a.layers, DTYPES[a.file_dtype], formats)
        sizes = {f: sum(os.path.getsize(os.path.join(dp, n)) for dp, _, ns in os.walk(p) for n in ns)
                 for f, p in paths.items()}
        print(f"# 7B-shaped, {a.layers} layers, stored {a.file_dtype}; torch {torch.__version__}, "
              f"{os.cpu_count()} CPUs; file sizes: " + ", ".join(f"{f} {s / 2**30:.2f} GiB" for f, s in sizes.items()))
        cols = ["format", "dtype", "load_s", "model_mb", "rss_base_mb", "peak_load_mb", "rss_after_load_mb"]
        if a.touch:
            cols += ["rss_after_touch_mb", "peak_total_mb"]
        print(" | ".join(cols))
        for f, p in paths.items():
            for dt in a.dtypes.split(","):
                cmd = [sys.executable, __file__, "--child", p, dt] + (["--touch"] if a.touch else [])
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    print(f"{f} {dt}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(" | ".join(str(v) for v in [f, dt] + [r.get(c, "") for c in cols[2:]]), flush=True)
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
