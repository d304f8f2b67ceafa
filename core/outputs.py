"""Output files: every file aromni writes appears complete or not at all, and names taken from input data
stay inside their output folder."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator

from .errors import AromniError


@contextmanager
def atomic_file(path: str) -> Iterator[IO[bytes]]:
    """Write ``path`` all or nothing: into a hidden temporary file beside it, renamed onto ``path`` only when the
    block finishes. On an error, Ctrl-C or SIGTERM the temporary file is removed and ``path`` is left as it was."""
    d, base = os.path.split(os.path.abspath(path))
    if os.path.isdir(path):
        raise AromniError(f"{path}: is a directory, expected a file name")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".part", dir=d)
    except OSError as e:
        raise AromniError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        # a failed write to this file (disk full, ...) is reported as such; other errors pass through
        if isinstance(e, OSError) and not isinstance(e, BrokenPipeError) and e.filename in (None, tmp, path):
            raise AromniError(f"{path}: cannot write ({e.strerror or e})") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def confined_path(out_dir: str, name: object, what: str = "output name") -> str:
    """``out_dir``/``name`` for a name taken from input data (a batch file, a token stream): refused unless it
    is a relative path that stays inside ``out_dir`` (no absolute paths, no ``..``, no links leading out)."""
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise AromniError(f"{what} {name!r}: expected a file name")
    if os.path.isabs(name) or name.startswith("~"):
        raise AromniError(f"{what} {name!r}: must be a name inside the output directory, not an absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts or name.endswith("/"):
        raise AromniError(f"{what} {name!r}: must stay inside the output directory")
    root = os.path.realpath(out_dir)
    path = os.path.join(out_dir, name)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise AromniError(f"{what} {name!r}: leads outside the output directory (through a link)")
    return path


def make_dir(path: str) -> str:
    """Create an output folder (and its parents); an error names the folder."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise AromniError(f"{path}: cannot create output directory ({e.strerror or e})") from None
    if not os.access(path, os.W_OK):
        raise AromniError(f"{path}: output directory is not writable")
    return path
