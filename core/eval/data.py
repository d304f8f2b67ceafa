"""Evaluation data: a JSONL manifest (the corpus format) or a LibriSpeech-layout directory, as items.

Manifest lines (paths relative to the manifest's directory)::

    {"task": "asr", "split": "heldout", "audio": "wav/1.wav", "text": "reference words"}
    {"task": "caption", "image": "img/1.png", "text": "a caption"}            # or "texts": [several refs]
    {"task": "tts", "text": "words to speak"}
    {"task": "t2i", "text": "a prompt", "attrs": {...}}                       # attrs: synthetic corpus scenes
    {"task": "s2i", "audio": "wav/2.wav", "text": "what is said", "attrs": {...}}

An optional ``group`` names the item's group for per-group metrics (corpus lines give ``voice_heldout``).

A line is used when its ``task`` equals the evaluated task (or it has none) and its ``split`` equals the
requested one (or it has none; split ``all`` takes every line). Caption lines sharing an image are merged
into one item with several references. LibriSpeech directories (``*.trans.txt`` beside ``ID.flac``) are
read recursively for ASR.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from ..errors import AromniError, InputError

TASKS = ("asr", "tts", "caption", "t2i", "s2i")
NEEDS = {"asr": ("audio", "text"), "tts": ("text",), "caption": ("image",), "t2i": ("text",), "s2i": ("audio",)}


@dataclass
class Item:
    id: str
    text: str | None = None  # reference transcript / caption, or the input text (tts, t2i)
    refs: list[str] = field(default_factory=list)  # all reference captions (caption task)
    audio: str | None = None  # absolute path
    image: str | None = None  # absolute path
    attrs: dict | None = None  # synthetic-scene attributes
    group: str | None = None  # speaker group for per-group metrics: "train voices" / "held-out voice" (corpus)


@dataclass
class Dataset:
    items: list[Item]
    info: dict  # path, format, split, n, sha256 (recorded in the report)


def load_dataset(path: str, task: str, split: str = "heldout", limit: int | None = None) -> Dataset:
    if task not in TASKS:
        raise AromniError(f"unknown task {task!r} ({', '.join(TASKS)})")
    used_split: str | None = split
    if os.path.isdir(path):
        if task != "asr":
            raise InputError(f"a directory is read as LibriSpeech (ASR only); {task} needs a JSONL manifest", path)
        items, digest = _librispeech(path)
        fmt, used_split = "librispeech", None
    elif os.path.isfile(path):
        items, digest = _manifest(path, task, split)
        fmt = "jsonl"
    else:
        raise InputError("no such file or directory", path)
    if limit is not None:
        items = items[:max(0, limit)]
    return Dataset(items, {"path": os.path.abspath(path), "format": fmt, "split": used_split, "n": len(items),
                           "sha256": digest})


def _manifest(path: str, task: str, split: str) -> tuple[list[Item], str]:
    root = os.path.dirname(os.path.abspath(path))
    h = hashlib.sha256()
    items: list[Item] = []
    by_image: dict[str, Item] = {}
    seen_tasks, seen_splits = set(), set()
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror})", path) from None
    with f:
        for no, raw in enumerate(f, 1):
            h.update(raw)
            if not raw.strip():
                continue
            try:
                d = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InputError(f"line {no}: not JSON ({e})", path) from None
            if not isinstance(d, dict):
                raise InputError(f"line {no}: expected a JSON object", path)
            seen_tasks.add(d.get("task"))
            seen_splits.add(d.get("split"))
            if d.get("task", task) != task or (split != "all" and d.get("split", split) != split):
                continue
            missing = [k for k in NEEDS[task] if not d.get(k)]
            if task == "caption" and not (d.get("text") or d.get("texts")):
                missing.append("text")
            if missing:
                raise InputError(f"line {no}: a {task} item needs {', '.join(missing)}", path)
            group = d.get("group")
            if group is None and d.get("voice_heldout") is not None:
                group = "held-out voice" if d["voice_heldout"] else "train voices"
            item = Item(id=str(d.get("id", no)), text=d.get("text"), attrs=d.get("attrs"), group=group,
                        audio=_resolve(root, d.get("audio"), path, no), image=_resolve(root, d.get("image"), path, no))
            refs = list(d.get("texts") or []) + ([d["text"]] if d.get("text") else [])
            if task == "caption":
                assert item.image is not None  # NEEDS["caption"] was checked above
                if item.image in by_image:  # another reference for an image already listed
                    first = by_image[item.image]
                    first.refs.extend(refs)
                    first.attrs = first.attrs or item.attrs
                    continue
                item.refs = refs
                item.text = refs[0]
                by_image[item.image] = item
            items.append(item)
    if not items:
        raise InputError(f"no {task} items with split {split!r} (tasks present: "
                         f"{sorted(str(t) for t in seen_tasks)}, splits present: {sorted(str(s) for s in seen_splits)}"
                         f"; split 'all' takes every split)", path)
    return items, h.hexdigest()


def _resolve(root: str, rel, manifest: str, no: int) -> str | None:
    if not rel:
        return None
    p = rel if os.path.isabs(rel) else os.path.join(root, rel)
    if not os.path.exists(p):
        raise InputError(f"line {no}: no such file {rel!r}", manifest)
    return p


def _librispeech(root: str) -> tuple[list[Item], str]:
    h = hashlib.sha256()
    items = []
    for d, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if not name.endswith(".trans.txt"):
                continue
            tpath = os.path.join(d, name)
            with open(tpath, "rb") as f:
                data = f.read()
            h.update(data)
            for no, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                uid, _, text = line.strip().partition(" ")
                audio = next((os.path.join(d, uid + ext) for ext in (".flac", ".wav")
                              if os.path.exists(os.path.join(d, uid + ext))), None)
                if audio is None:
                    raise InputError(f"line {no}: no {uid}.flac or {uid}.wav beside the transcript", tpath)
                items.append(Item(id=uid, text=text, audio=audio))
    if not items:
        raise InputError("no *.trans.txt transcripts found (LibriSpeech layout: SPEAKER/CHAPTER/"
                         "SPEAKER-CHAPTER.trans.txt beside SPEAKER-CHAPTER-NNNN.flac)", root)
    return items, h.hexdigest()
