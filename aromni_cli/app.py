"""The ``aromni`` console entry point: assembles the typer app and maps errors to exit codes.

Exit codes: 0 success; 2 usage errors and bad input (one line on stderr); 1 other failures;
141 when stdout is closed early (as a program killed by SIGPIPE); 130 on Ctrl-C (SIGINT), 143 on SIGTERM.
``--debug`` adds the traceback and keeps the exit code.
"""
from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import traceback

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

_app = typer.Typer(
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


_registered: set[str] = set()


def _register(only: str | None = None) -> None:
    # A command whose module cannot import a dependency stays listed and says why; any other error in a
    # command's module is a bug and fails loudly. ``only``: register just that command, "" none (a run of one
    # command imports no other command's module and builds no other command's parameters).
    for name, module, short in COMMANDS:
        if (only is not None and name != only) or name in _registered:
            continue
        try:
            fn = importlib.import_module(f"aromni.commands.{module}").run
        except ImportError as e:
            fn = _unavailable(name, e)
        _app.command(name=name, help=(fn.__doc__ or short), short_help=short)(fn)
        _registered.add(name)


def _command_of(args: list[str]) -> str | None:
    """The command a command line runs: its first argument that is not a root option, if that is a command;
    ``""`` (none) for ``--version``; None (all of them: help or an error lists them) otherwise."""
    for a in args:
        if a == "--version":
            return ""
        if a in ("-h", "--help"):
            return None
        if not a.startswith("-"):
            return a if a in {c[0] for c in COMMANDS} else None
    return None


def __getattr__(name: str):
    # ``app`` with every command, for callers that use the app object itself (man pages, tests)
    if name == "app":
        _register()
        globals()["app"] = _app
        return _app
    raise AttributeError(name)


def _version(value: bool) -> None:
    if value:
        print(f"aromni {__version__}")
        raise typer.Exit()


@_app.callback()
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


# option names of the library whose flag is not "--" + the name with dashes
FLAGS = {"window_s": "--window", "y": "--y"}


def flag_of(option: str) -> str:
    """The command-line flag for a library option name (``top_k`` -> ``--top-k``)."""
    return FLAGS.get(option) or "--" + option.replace("_", "-")


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that outputs in progress are cleaned up (exit 143)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _fail(code: int, line: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(line, file=sys.stderr)
    sys.exit(code)


def _is_usage_error(e: BaseException) -> bool:
    # click's exceptions (typer ships its own copy of click, so match by shape rather than class)
    return hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int)


def _usage_error(e, debug: bool) -> None:
    if type(e).__name__ == "NoArgsIsHelpError":  # no arguments: the help is the message
        e.show()
        sys.exit(2)
    ctx = getattr(e, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    _fail(e.exit_code, f"aromni: error: {e.format_message()}{hint}", debug)


def main(argv: list[str] | None = None) -> None:
    """Run the command line ``argv`` (None: ``sys.argv``). As the program itself (``argv`` None, no other
    thread left), it ends with ``os._exit`` once stdout and stderr are flushed and the exit handlers have run:
    the interpreter's own teardown of the loaded torch modules costs ~0.3 s and writes nothing."""
    try:
        _main(argv)
    except SystemExit as e:
        if argv is not None or threading.active_count() > 1:
            raise
        _exit_now(e.code)


def _exit_now(code) -> None:
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_pipe_exit()
    except (OSError, ValueError):
        pass
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code or 0)


def _main(argv: list[str] | None) -> None:
    from aromni.core.errors import AromniError, NotAvailableError, OptionError

    debug = "--debug" in (argv or sys.argv) or os.environ.get("AROMNI_DEBUG", "") not in ("", "0")
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass
    try:
        _register(_command_of(sys.argv[1:] if argv is None else argv))
        rv = _app(args=argv, prog_name="aromni", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except SystemExit:
        if "PacifyFlushWrapper" in type(sys.stdout).__name__:  # click turned a BrokenPipeError into exit 1
            _quiet_pipe_exit()
        raise
    except BrokenPipeError:
        _quiet_pipe_exit()
    except KeyboardInterrupt:
        _fail(130, "aromni: interrupted", debug)
    except Terminated:
        _fail(143, "aromni: terminated", debug)
    except typer.Abort:
        _fail(1, "aromni: aborted", debug)
    except OptionError as e:
        _fail(2, f"aromni: error: {e.naming(flag_of(e.option))}", debug)
    except AromniError as e:
        _fail(2, f"aromni: error: {e}", debug)
    except NotAvailableError as e:
        _fail(1, f"aromni: {e}", debug)
    except Exception as e:
        if _is_usage_error(e):
            _usage_error(e, debug)
        # anything unexpected: one line, exit 1 (traceback with --debug)
        msg = str(e).splitlines()[0] if str(e) else ""
        _fail(1, f"aromni: error: {type(e).__name__}: {msg}" + ("" if debug else " (rerun with --debug for the "
                                                                                   "traceback)"), debug)
    finally:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_pipe_exit()
