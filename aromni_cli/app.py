"""The ``aromni`` console entry point: assembles the typer app and maps errors to exit codes.

Exit codes: 0 success; 2 usage errors and bad input (one line on stderr); 1 other failures;
141 when stdout is closed early (as a program killed by SIGPIPE); 130 on Ctrl-C.
"""
from __future__ import annotations

import os
import sys

import typer

from aromni import __version__
import importlib

COMMANDS = [
    ("tokenize-image", "tokenize_image", "Images -> joint-vocabulary token stream."),
    ("tokenize-audio", "tokenize_audio", "Audio -> joint-vocabulary token stream."),
    ("tokenize-text", "tokenize_text", "Text -> joint-vocabulary token stream (the model's text ids)."),
    ("detok", "detok", "Token stream -> text on stdout, images as PNG, speech as WAV."),
    ("generate", "generate", "Token stream in, token stream out (streams as it decodes)."),
    ("train", "train", "Train a model or tokenizer from a YAML config."),
    ("chat", "chat", "Interactive or batch (JSONL) multi-turn chat."),
    ("tts", "tts", "Text -> speech (WAV or raw PCM, streamed)."),
    ("asr", "asr", "Speech -> text."),
    ("caption", "caption", "Image -> text."),
    ("t2i", "t2i", "Text -> image (PNG)."),
    ("eval", "eval", "Evaluate a model (WER, CIDEr, CLIPScore, latency, RTF)."),
    ("plot", "plot", "Plot training metrics or evaluation reports to PNG."),
    ("corpus", "corpus", "Generate the synthetic tri-modal corpus (scenes, espeak-ng speech)."),
    ("serve", "serve", "Serve models over an OpenAI-compatible HTTP API (models stay loaded)."),
]

app = typer.Typer(
    name="aromni",
    help="AR-Omni toolkit: one autoregressive transformer over text, image and speech tokens.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _unavailable(name: str, err: BaseException):
    def run() -> None:
        from aromni.core.errors import NotAvailableError
        raise NotAvailableError(f"'aromni {name}' is unavailable: {type(err).__name__}: {err}")
    return run


def _register() -> None:
    # A command whose module fails to import (e.g. a missing optional dependency) stays listed and says why.
    for name, module, short in COMMANDS:
        try:
            fn = importlib.import_module(f"aromni.commands.{module}").run
        except Exception as e:  # noqa: BLE001 - reported when the command is run
            fn = _unavailable(name, e)
        app.command(name=name, help=(fn.__doc__ or short), short_help=short)(fn)


_register()


def _version(value: bool) -> None:
    if value:
        print(f"aromni {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.", envvar="AROMNI_DEBUG"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """AR-Omni toolkit: one autoregressive transformer over text, image and speech tokens."""
    if debug:
        os.environ["AROMNI_DEBUG"] = "1"


def _quiet_pipe_exit() -> None:
    # stdout's reader went away: point stdout at /dev/null so the interpreter's final flush is silent
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    os._exit(141)


def main(argv: list[str] | None = None) -> None:
    from aromni.core.errors import AromniError, NotAvailableError

    debug = "--debug" in (argv or sys.argv) or os.environ.get("AROMNI_DEBUG", "") not in ("", "0")
    try:
        app(args=argv, prog_name="aromni")
    except SystemExit:
        if "PacifyFlushWrapper" in type(sys.stdout).__name__:  # click turned a BrokenPipeError into exit 1
            _quiet_pipe_exit()
        raise
    except BrokenPipeError:
        _quiet_pipe_exit()
    except KeyboardInterrupt:
        print("aromni: interrupted", file=sys.stderr)
        sys.exit(130)
    except AromniError as e:
        if debug:
            raise
        print(f"aromni: error: {e}", file=sys.stderr)
        sys.exit(2)
    except NotAvailableError as e:
        if debug:
            raise
        print(f"aromni: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # anything unexpected: one line, exit 1 (traceback with --debug)
        if debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"aromni: error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
    finally:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_pipe_exit()
