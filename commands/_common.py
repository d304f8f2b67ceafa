"""Options and I/O helpers shared by every command, so the same flag means the same thing everywhere."""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Iterator, Optional

import typer
from typing_extensions import Annotated

from aromni.core.outputs import atomic_file, confined_path, make_dir  # noqa: F401 - used by every command
from aromni.core.errors import AromniError, InputError

# --- common options ---------------------------------------------------------------------------
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or informational messages on stderr.")]
Json = Annotated[bool, typer.Option("--json", help="Print a structured JSON result on stdout.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed (same seed, same output).")]
Device = Annotated[str, typer.Option("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto (bf16 on CUDA, else fp32), fp32, bf16 or fp16.")]
Model = Annotated[Optional[str], typer.Option(
    "--model", "-m", envvar="AROMNI_MODEL",
    help="Model directory, checkpoint or hub id (local cache). Default: $AROMNI_MODEL, else the bundled model.")]
Output = Annotated[str, typer.Option("--output", "-o", help="Output file; - for stdout.")]


def _use_threads(value: Optional[int]) -> Optional[int]:
    # runs while the command line is parsed, before the command imports torch (OpenMP reads its settings once)
    from aromni.core.threads import apply_threads

    apply_threads(value)
    return value


Threads = Annotated[Optional[int], typer.Option(
    "--threads", callback=_use_threads, show_default=False,
    help="CPU threads for tensor work (0: one per core). Default: $AROMNI_THREADS, else $OMP_NUM_THREADS, else 1.")]

QUANT_CHOICES = ("none", "int8", "int4")  # core.quant.QUANTS (not imported here: it imports torch)


def _check_quant(value: str) -> str:
    if value not in QUANT_CHOICES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(map(repr, QUANT_CHOICES))}")
    return value


Quant = Annotated[str, typer.Option(
    "--quant", callback=_check_quant,
    help="Quantise the model's linear layers when loading: none, int8 (per-channel int8 weights; CPU and CUDA) "
         "or int4 (grouped 4-bit weights; CUDA only).")]


def log(msg: str, quiet: bool = False) -> None:
    """Informational message on stderr."""
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def stdout_binary() -> IO[bytes]:
    return sys.stdout.buffer


def refuse_tty(what: str, path: str = "-") -> None:
    """Binary data never goes to a terminal."""
    if path == "-" and sys.stdout.isatty():
        raise AromniError(f"refusing to write {what} to a terminal; redirect stdout (> file) or use -o FILE")


@contextmanager
def binary_output(path: str, what: str) -> Iterator[IO[bytes]]:
    """Open ``path`` for binary writing (``-``: stdout, refused on a terminal); a file appears only complete
    (see :func:`atomic_file`)."""
    if path == "-":
        refuse_tty(what)
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with atomic_file(path) as f:
        yield f


TOKEN_SUFFIXES = (".npy", ".json", ".txt", ".tok", ".tokens")  # token files: NPY, JSON, else the line format
IMAGE_SUFFIXES = (".png",)


def check_suffix(path: str, allowed: tuple[str, ...], what: str) -> None:
    """Refuse an output file whose suffix names another format than the ones written (``-`` is stdout)."""
    if path == "-":
        return
    ext = os.path.splitext(path)[1].lower()
    if ext not in allowed:
        raise AromniError(f"{path}: {what} is written as {' or '.join(allowed)}; "
                          f"{'the suffix ' + repr(ext) if ext else 'a name without a suffix'} names another format")


def text_arg(value: Optional[str], what: str = "text") -> str:
    """The argument, or all of stdin when it is missing or ``-``. Refused (exit 2) when it is empty, only
    whitespace or not valid UTF-8."""
    if value is not None and value != "-":
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # argv bytes that are not UTF-8 arrive as lone surrogates
            raise AromniError(f"the {what} argument is not valid UTF-8") from None
        if not value.strip():
            raise AromniError(f"the {what} argument is empty")
        return value
    if sys.stdin is None or sys.stdin.isatty():
        raise AromniError(f"no {what} given: pass it as an argument or pipe it on stdin")
    raw = sys.stdin.buffer.read()
    try:
        data = raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError as e:
        raise AromniError(f"{what} on stdin is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
                          ) from None
    if not data:
        raise AromniError(f"no {what} given: stdin was empty" if not raw else f"no {what} given: stdin held only "
                          "whitespace")
    return data


def input_bytes(path: str, what: str) -> tuple[bytes, str]:
    """Read a whole input file (``-``: stdin) as bytes, with a name for messages."""
    if path == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise AromniError(f"no {what} given: pass a file or pipe it on stdin")
        return sys.stdin.buffer.read(), "<stdin>"
    try:
        with open(path, "rb") as f:
            return f.read(), path
    except OSError as e:
        raise AromniError(f"{path}: {e.strerror or e}") from None


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")


# --- batch (JSONL) input ---------------------------------------------------------------------------
def read_jsonl(path: str, what: str) -> list[dict]:
    """Objects of a JSONL file (``-``: stdin); blank lines skipped, errors name the line."""
    return [obj for _, obj in jsonl_lines(path, what)]


def jsonl_lines(path: str, what: str) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file (``-``: stdin); errors name the line."""
    if path == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise AromniError(f"no {what} given: pipe the JSONL file on stdin")
        raw = sys.stdin.buffer.read()
    else:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise InputError(e.strerror or str(e), path) from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file", "<stdin>" if path == "-" else path) from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"line {n}: invalid JSON ({e.msg})", path) from None
        if not isinstance(obj, dict):
            raise InputError(f"line {n}: expected a JSON object", path)
        out.append((n, obj))
    if not out:
        raise InputError(f"no {what} in the file", path)
    return out


def resolve_rel(path: str, batch_file: str) -> str:
    """Paths in a batch file are relative to the file's directory."""
    if path == "-" or os.path.isabs(path) or batch_file == "-":
        return path
    return os.path.join(os.path.dirname(os.path.abspath(batch_file)), path)


@dataclass
class BatchItem:
    """One line of a ``--batch`` file: its line number, the object, the value of the needed field (for a file
    field, resolved against the batch file's folder) and, with an output folder, where its output goes."""

    line: int
    data: dict
    value: str
    output: Optional[str] = None


def batch_items(path: str, what: str, key: str, *, alt: tuple[str, ...] = (), is_path: bool = False,
                out_dir: Optional[str] = None) -> list[BatchItem]:
    """The items of a ``--batch`` JSONL file, each with a non-empty string ``key`` (or one of ``alt``).

    With ``out_dir``, an item's own ``"output"`` name is checked to stay inside ``out_dir`` (see
    :func:`confined_path`). Everything is checked before anything is decoded or written; errors name the line.
    """
    items = []
    for n, obj in jsonl_lines(path, what):
        value = next((obj[k] for k in (key, *alt) if k in obj), None)
        if not isinstance(value, str) or not value.strip():
            need = f"\"{key}\" (a file path)" if is_path else f"a non-empty \"{key}\""
            raise InputError(f"line {n}: needs {need}", path)
        if is_path:
            value = resolve_rel(value, path)
        out = obj.get("output")
        if out is not None and out_dir is not None:
            try:
                out = confined_path(out_dir, out, "\"output\"")
            except AromniError as e:
                raise InputError(f"line {n}: {e}", path) from None
        items.append(BatchItem(n, obj, value, out))
    return items
