"""Hub ids (``org/name[@revision]``) resolved from the local Hugging Face cache, offline.

The cache layout (huggingface_hub): ``<cache>/models--org--name/refs/<revision>`` holds a commit hash and
``snapshots/<hash>/`` the files (usually symlinks into ``blobs/``). Nothing is downloaded.
"""
from __future__ import annotations

import os
import re

from .errors import CheckpointError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def hub_cache_dir() -> str:
    """HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def is_repo_id(s: str) -> bool:
    """``org/name`` or ``org/name@rev`` that is not an existing local path."""
    return bool(_REPO_ID.match(s)) and not os.path.exists(s)


def snapshot_path(repo_id: str, revision: str | None = None, cache_dir: str | None = None) -> str:
    """Local snapshot directory of ``repo_id`` (a model repo) at ``revision`` (default: main)."""
    if "@" in repo_id and revision is None:
        repo_id, revision = repo_id.split("@", 1)
    cache = cache_dir or hub_cache_dir()
    repo_dir = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    hint = (f"download it first (e.g. `huggingface-cli download {repo_id}`), or pass a local directory")
    if not os.path.isdir(repo_dir):
        raise CheckpointError(f"{repo_id}: no such local path, nor in the local Hugging Face cache ({cache}); {hint}")
    snaps = os.path.join(repo_dir, "snapshots")
    rev = revision or "main"
    ref = os.path.join(repo_dir, "refs", rev)
    commit: str | None
    if os.path.isfile(ref):
        with open(ref) as f:
            commit = f.read().strip()
    else:
        commit = rev if revision else None
    if commit is not None and os.path.isdir(os.path.join(snaps, commit)):
        return os.path.join(snaps, commit)
    if revision is None:  # no refs/main (e.g. a cache copied by hand): the newest snapshot
        cands = [os.path.join(snaps, d) for d in os.listdir(snaps)] if os.path.isdir(snaps) else []
        cands = [c for c in cands if os.path.isdir(c)]
        if cands:
            return max(cands, key=os.path.getmtime)
    what = f"revision {revision!r}" if revision else "a snapshot"
    raise CheckpointError(f"{repo_id}: {what} is not in the local Hugging Face cache ({repo_dir}); {hint}")


def resolve(path: str) -> str:
    """A local path as is; a hub id -> its cached snapshot directory; else a CheckpointError."""
    if os.path.exists(path):
        return path
    if is_repo_id(path):
        return snapshot_path(path)
    raise CheckpointError(f"{path}: no such file or directory (and not a hub id like org/name)")
