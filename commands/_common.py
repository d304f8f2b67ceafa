"""Options and I/O helpers shared by every command, so the same flag means the same thing everywhere."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import IO, Iterator, Optional

import typer
from typing_extensions import Annotated

from aromni.core.errors import AromniError

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
    """Open ``path`` for binary writing (``-``: stdout, refused on a terminal)."""
    if path == "-":
        refuse_tty(what)
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        f = open(path, "wb")
    except OSError as e:
        raise AromniError(f"{path}: cannot write ({e.strerror})") from None
    with f:
        yield f


def text_arg(value: Optional[str], what: str = "text") -> str:
    """The argument, or all of stdin when it is missing or ``-``."""
    if value is not None and value != "-":
        return value
    if sys.stdin is None or sys.stdin.isatty():
        raise AromniError(f"no {what} given: pass it as an argument or pipe it on stdin")
    data = sys.stdin.read().strip()
    if not data:
        raise AromniError(f"no {what} given: stdin was empty")
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
