"""Small training inputs in the exact upstream schemas, for the train tests (tiny compact layout)."""
from __future__ import annotations

import json
import os
import random

import numpy as np

# the compact layout of the tiny LM tests: specials 0..15, text 16..115, image 116..179, audio 180..243
VOCAB = {"compact": {"text": 100, "image": 64, "audio": 64, "image_tokens": 16}}
UPSTREAM_TASKS = ["image_caption", "speech_to_text", "text_to_image", "text_to_speech", "text_to_text"]


def layout():
    from aromni.core.vocab import compact_layout

    return compact_layout(**VOCAB["compact"])


def upstream_sequence(rng: random.Random, task: str, lay) -> tuple[list[int], list[int]]:
    """(discrete_code, response) shaped like AR-Omni pretraining lines: <bos> prompt response <eos>."""
    text = lambda n: [rng.randrange(lay.text_start, lay.text_end) for _ in range(n)]  # noqa: E731
    image = [lay.boi] + [lay.image_offset + rng.randrange(lay.image_codes) for _ in range(lay.image_tokens)] + [lay.eoi]
    n_audio = rng.randint(3, 8)
    audio = [lay.boa] + [lay.audio_offset + rng.randrange(lay.audio_codes) for _ in range(n_audio)] + [lay.eoa]
    prompt = [lay.bos] + text(rng.randint(2, 6))
    if task == "image_caption":
        prompt += image + [lay.eoh]
        resp = text(rng.randint(2, 8))
    elif task == "speech_to_text":
        prompt += audio + [lay.eoh]
        resp = text(rng.randint(2, 8))
    elif task == "text_to_image":
        prompt += [lay.eoh]
        resp = image
    elif task == "text_to_speech":
        prompt += [lay.eoh]
        resp = audio
    else:
        resp = text(rng.randint(3, 10))
    return prompt + resp + [lay.eos], resp


def write_upstream_shards(root: str, n_files: int = 2, per_file: int = 16, seed: int = 0) -> str:
    """AR-Omni pretraining ``*.jsonl`` shards (discrete_code, task, response, id)."""
    os.makedirs(root, exist_ok=True)
    rng, lay = random.Random(seed), layout()
    for f in range(n_files):
        with open(os.path.join(root, f"part-{f:03d}.jsonl"), "w") as fh:
            for i in range(per_file):
                task = UPSTREAM_TASKS[(f * per_file + i) % len(UPSTREAM_TASKS)]
                code, resp = upstream_sequence(rng, task, lay)
                fh.write(json.dumps({"id": f"{f}-{i}", "discrete_code": code, "task": task, "response": resp}) + "\n")
    return root


def write_codebook(path: str, dim: int = 8, seed: int = 0) -> str:
    """A frozen perceptual target table [64 image codes, dim] (stands in for perception.ckpt)."""
    np.save(path, np.random.default_rng(seed).standard_normal((64, dim)).astype(np.float32))
    return path


def lm_config(tmp: str, data: str, **extra) -> str:
    """A tiny ``kind: lm`` YAML over upstream shards; ``extra`` entries are appended as top-level YAML text."""
    import yaml

    cfg = {
        "kind": "lm", "out_dir": os.path.join(tmp, "run"), "seed": 0,
        "model": {"config": "tiny", "vocab": VOCAB},
        "data": {"train": [{"type": "pretrain_jsonl", "path": data}], "batch_size": 4, "shuffle_buffer": 8},
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "train": {"max_steps": 6, "device": "cpu"},
        "checkpoint": {"every": 2, "keep": 2, "export_bundle": False},
    }
    for k, v in extra.items():
        node = cfg
        parts = k.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    path = os.path.join(tmp, "lm.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path
