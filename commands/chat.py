"""`aromni chat`: interactive REPL, or --batch dialogs.jsonl."""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Optional

import typer
from typing_extensions import Annotated

from aromni.commands._common import Device, Dtype, Json, Model, Quant, Quiet, Seed, Threads, input_bytes, log
from aromni.commands._decode import (Batch, BatchSize, Cfg, CfgImage, CfgText, Compat, Compile, Greedy, ImageGreedy,
                                     ImageTemp, MaxNew, OutDir, RepPenalty, Temperature, TopK, TopP, decode_options,
                                     load_model, make_dir, one_line, print_line, resolve_rel)
from aromni.commands._remote import Host, Local, remote, remote_options
from aromni.core.errors import AromniError, InputError


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))[:80] or "dialog"


def _why(e: BaseException) -> str:
    return f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else str(e)


def save_reply(omni, reply, out_dir: str, stem: str) -> dict:
    """Write a reply's images (PNG) and speech (WAV); return the JSON record."""
    from aromni.core.audio_io import write_wav

    rec = {"text": reply.text, "transcript": reply.transcript, "images": [], "audio": [], "tokens": len(reply.tokens)}
    for k, img in enumerate(reply.images):
        path = os.path.join(out_dir, f"{stem}_img{k}.png")
        img.save(path, format="PNG")
        rec["images"].append(path)
    for k, wav in enumerate(reply.audio):
        path = os.path.join(out_dir, f"{stem}_audio{k}.wav")
        write_wav(path, wav, omni.speech.sample_rate)
        rec["audio"].append(path)
    if reply.trimmed:
        rec["trimmed_turns"] = reply.trimmed
    return rec


def save_remote_reply(reply, out_dir: str, stem: str) -> dict:
    """``save_reply`` for a server's reply (its PNG and WAV files as bytes): the same files and record."""
    from aromni.core.outputs import atomic_file

    rec = {"text": reply.text, "transcript": reply.transcript, "images": [], "audio": [], "tokens": len(reply.tokens)}
    for kind, ext, files in (("img", "png", reply.images), ("audio", "wav", reply.audio)):
        for k, data in enumerate(files):
            path = os.path.join(out_dir, f"{stem}_{kind}{k}.{ext}")
            with atomic_file(path) as f:
                f.write(data)
            rec["images" if kind == "img" else "audio"].append(path)
    if reply.trimmed:
        rec["trimmed_turns"] = reply.trimmed
    return rec


def _read(path: str) -> bytes:
    """A file's bytes (a chat image or clip sent to a server); errors as the in-process loaders word them."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror or e})", path) from None


# ----------------------------------------------------------------------------------------------
# batch mode
# ----------------------------------------------------------------------------------------------
@dataclass
class Dialog:
    line: int  # its line in the batch file
    ordinal: int  # its place among the file's dialogs (seed offset)
    id: str
    actions: list  # {"turn": {text, images, audio}, "reply": str | None, "reset": bool}, "k": turn index}
    records: list = field(default_factory=list)
    error: Optional[str] = None


def parse_dialog(obj: dict, n: int, src: str) -> tuple[str, list[dict]]:
    """A dialog on line ``n`` -> (id, actions); an InputError naming the line (and the file of a missing image
    or clip) when it is malformed.

    Accepts aromni's schema (turns with role user/assistant, text, audio, image/images) and the reference's
    (dialog_id, turns with text or wav_path, image_paths, reset)."""
    did = obj.get("dialog_id", obj.get("id", f"dialog{n:04d}"))
    turns = obj.get("turns")
    if not isinstance(turns, list) or not turns:
        raise InputError(f"line {n}: needs a non-empty \"turns\" list", src)
    actions: list[dict] = []
    for k, t in enumerate(turns):
        if not isinstance(t, dict):
            raise InputError(f"line {n}, turn {k}: expected an object", src)
        role = t.get("role", "user")
        if role == "assistant":
            if not actions or actions[-1]["reply"] is not None:
                raise InputError(f"line {n}, turn {k}: an assistant turn must follow a user turn", src)
            if not isinstance(t.get("text"), str):
                raise InputError(f"line {n}, turn {k}: an assistant turn needs \"text\"", src)
            actions[-1]["reply"] = t["text"]
            continue
        if role != "user":
            raise InputError(f"line {n}, turn {k}: unknown role {role!r}", src)
        imgs = t.get("image_paths", t.get("images", [t["image"]] if t.get("image") else []))
        if isinstance(imgs, str):
            imgs = [imgs]
        audio = t.get("wav_path", t.get("audio"))
        text = t.get("text")
        if text is None and audio is None and not imgs:
            raise InputError(f"line {n}, turn {k}: needs \"text\", \"audio\"/\"wav_path\" or images", src)
        if not all(isinstance(p, str) for p in imgs) or not (audio is None or isinstance(audio, str)):
            raise InputError(f"line {n}, turn {k}: image and audio paths must be strings", src)
        paths = [resolve_rel(p, src) for p in imgs]
        wav = resolve_rel(audio, src) if audio else None
        for what, p in [("image", q) for q in paths] + ([("audio", wav)] if wav else []):
            if not os.path.isfile(p):
                raise InputError(f"line {n}, turn {k}: {what} file {p} not found", src)
        actions.append({"turn": {"text": text, "images": paths, "audio": wav}, "reply": None,
                        "reset": bool(t.get("reset", False)), "k": k})
    return str(did), actions


def read_dialogs(path: str) -> tuple[list[Dialog], list[tuple[int, str]]]:
    """The valid dialogs of a JSONL file and (line, error) for each line that is not one."""
    data, src = input_bytes(path, "dialogs")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file", src) from None
    dialogs, bad = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        ordinal = len(dialogs) + len(bad)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append((n, f"line {n}: invalid JSON ({e.msg})"))
            continue
        if not isinstance(obj, dict):
            bad.append((n, f"line {n}: expected a JSON object"))
            continue
        try:
            did, actions = parse_dialog(obj, n, path)
        except InputError as e:
            bad.append((n, str(e).removeprefix(f"{path}: ")))
            continue
        dialogs.append(Dialog(n, ordinal, did, actions))
    if not dialogs and not bad:
        raise InputError("no dialogs in the file", src)
    return dialogs, bad


def run_batch(omni, opts, dialogs: list[Dialog], out_dir: str, seed: Optional[int], quiet: bool) -> None:
    """Every dialog's turns, round by round (each round's turns decoded as one batch); a dialog that fails
    (an unreadable file, a turn too long for the context) gets its ``error`` and takes no further turns."""
    from aromni.core import chat
    from aromni.core.audio_io import load_audio
    from aromni.core.image_tokenizer import open_image

    sessions = chat.sessions(omni, opts, [d.ordinal for d in dialogs], seed)

    def load_turn(t: dict) -> dict:
        audio = None
        if t["audio"]:
            if omni.speech is None:
                raise AromniError(f"{omni.source or 'model'}: has no speech tokenizer for audio turns")
            audio = load_audio(t["audio"], omni.speech.sample_rate)
        return {"text": t["text"], "images": [open_image(p) for p in t["images"]] or None, "audio": audio}

    def fail(d: Dialog, act: dict, e: BaseException) -> None:
        d.error = f"line {d.line}, turn {act['k']}: {_why(e)}"

    for r in range(max(len(d.actions) for d in dialogs)):
        todo = []
        for d, s in zip(dialogs, sessions):
            if d.error is not None or r >= len(d.actions):
                continue
            act = d.actions[r]
            if act["reset"]:
                s.reset()
            try:
                turn = load_turn(act["turn"])
                if act["reply"] is not None:  # a given assistant reply joins the history as if generated
                    s.replay(act["reply"], **turn)
                    d.records.append({"text": act["reply"], "given": True})
                    continue
            except (AromniError, OSError) as e:
                fail(d, act, e)
                continue
            todo.append((d, s, turn))
        if todo:
            errors: list = []
            replies = chat.chat_step([s for _, s, _ in todo], [t for _, _, t in todo], errors=errors)
            for k, e in errors:
                fail(todo[k][0], todo[k][0].actions[r], e)
            for (d, _, _), rep in zip(todo, replies):
                if rep is not None:
                    d.records.append(save_reply(omni, rep, out_dir, f"{_safe(d.id)}_t{r}"))
        log(f"aromni: round {r + 1}: {len(todo)} replies", quiet)


def run_batch_remote(client, options: dict, dialogs: list[Dialog], out_dir: str, seed: Optional[int],
                     quiet: bool, workers: int = 8) -> None:
    """``run_batch`` through a server: each dialog's turns in order, several dialogs at once (the server
    batches their decoding), the same seeds, files and records. A turn the server refuses (or a file that
    cannot be read) ends its dialog with ``error``; an unreachable server stops the command."""
    from concurrent.futures import ThreadPoolExecutor

    from aromni.core.client import ServerError, fresh_seed
    from aromni.core.remote_chat import RemoteChat

    s0 = seed if seed is not None else fresh_seed()

    def one(d: Dialog) -> None:
        chat = RemoteChat(client, options, s0 + d.ordinal)
        for r, act in enumerate(d.actions):
            if act["reset"]:
                chat.reset()
            t = act["turn"]
            try:
                turn = {"text": t["text"], "images": [_read(p) for p in t["images"]] or None,
                        "audio": _read(t["audio"]) if t["audio"] else None}
                if act["reply"] is not None:
                    chat.replay(act["reply"], **turn)
                    d.records.append({"text": act["reply"], "given": True})
                    continue
                reply = chat.say(**turn)
            except (ServerError, InputError) as e:
                if isinstance(e, ServerError) and e.status >= 500:
                    raise
                d.error = f"line {d.line}, turn {act['k']}: {_why(e)}"
                return
            d.records.append(save_remote_reply(reply, out_dir, f"{_safe(d.id)}_t{r}"))

    with ThreadPoolExecutor(max(1, min(workers, len(dialogs)))) as pool:
        for _ in pool.map(one, dialogs):
            pass
    log(f"aromni: {len(dialogs)} dialog(s) answered by {client.host}", quiet)


# ----------------------------------------------------------------------------------------------
# interactive
# ----------------------------------------------------------------------------------------------
class LocalTalk:
    """The REPL's conversation in-process: a ChatSession on a loaded model."""

    def __init__(self, omni, opts, seed: Optional[int]):
        from aromni.core.chat import ChatSession

        self.omni, self.session = omni, ChatSession(omni, opts, seed=seed)
        self.say, self.reset = self.session.say, self.session.reset

    def image(self, path: str):
        from aromni.core.image_tokenizer import open_image

        return open_image(path)

    def audio(self, path: str):
        from aromni.core.audio_io import load_audio

        if self.omni.speech is None:
            raise AromniError("this model has no speech tokenizer")
        return load_audio(path, self.omni.speech.sample_rate)

    def save(self, reply, out_dir: str, stem: str) -> dict:
        return save_reply(self.omni, reply, out_dir, stem)


class RemoteTalk:
    """The REPL's conversation through a server (core.remote_chat): images and audio go as file bytes."""

    def __init__(self, client, options: dict, seed: Optional[int]):
        from aromni.core.remote_chat import RemoteChat

        self.session = RemoteChat(client, options, seed)
        self.say, self.reset = self.session.say, self.session.reset
        self.image = self.audio = _read

    def save(self, reply, out_dir: str, stem: str) -> dict:
        return save_remote_reply(reply, out_dir, stem)


class Repl:
    """The REPL's state; each slash command is a method in ``SLASH`` that returns a turn to send, or None.
    ``talk`` holds the conversation (:class:`LocalTalk` or :class:`RemoteTalk`)."""

    def __init__(self, talk, out_dir: str, json_out: bool, quiet: bool, tty: bool):
        self.talk, self.out_dir, self.json_out, self.quiet, self.tty = talk, out_dir, json_out, quiet, tty
        self.images: list = []
        self.image_paths: list[str] = []
        self.log_turns: list[dict] = []  # the conversation as --batch turns (/save)
        self.replies = 0

    def help(self, arg: str) -> None:
        log(HELP)

    def reset(self, arg: str) -> None:
        self.talk.reset()
        self.images, self.image_paths = [], []
        self.log_turns.append({"reset": True})
        log("aromni: conversation reset", self.quiet)

    def image(self, arg: str) -> None:
        if not arg:
            raise AromniError("/image needs a path")
        self.images.append(self.talk.image(arg))
        self.image_paths.append(os.path.abspath(arg))
        log(f"aromni: image queued ({len(self.images)})", self.quiet)

    def audio(self, arg: str) -> tuple[dict, dict]:
        path, _, text = arg.partition(" ")
        if not path:
            raise AromniError("/audio needs a path")
        turn = {"audio": self.talk.audio(path), "text": text.strip() or None}
        return turn, {"wav_path": os.path.abspath(path), **({"text": text.strip()} if text.strip() else {})}

    def save(self, arg: str) -> None:
        if not arg:
            raise AromniError("/save needs a path")
        with open(arg, "w", encoding="utf-8") as f:  # one JSONL line: replay with --batch
            f.write(json.dumps({"dialog_id": "chat", "turns": self.log_turns}) + "\n")
        log(f"aromni: saved {arg}", self.quiet)

    def line(self, line: str) -> bool:
        """Handle one input line; False to quit."""
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            if cmd in QUIT:
                return False
            if cmd not in SLASH:
                raise AromniError(f"unknown command {cmd} (/help)")
            got = SLASH[cmd][0](self, arg.strip())
            if got is None:
                return True
            turn, rec_turn = got
        else:
            turn, rec_turn = {"text": line}, {"text": line}
        self.send(turn, rec_turn)
        return True

    def send(self, turn: dict, rec_turn: dict) -> None:
        if self.images:
            turn["images"] = self.images
            rec_turn["image_paths"] = self.image_paths
        reply = self.talk.say(**turn)
        if self.log_turns and self.log_turns[-1] == {"reset": True}:
            self.log_turns.pop()
            rec_turn["reset"] = True
        self.images, self.image_paths = [], []
        self.log_turns.append(rec_turn)
        rec = self.talk.save(reply, self.out_dir, f"chat_t{self.replies}")
        self.replies += 1
        if self.json_out:
            print_line(json.dumps(rec))
            return
        if reply.transcript:
            log(f"(heard: {reply.transcript})", self.quiet)
        print_line(f"model> {reply.text}" if self.tty else one_line(reply.text))
        for p in rec["images"] + rec["audio"]:
            log(f"aromni: saved {p}", self.quiet)
        if reply.trimmed:
            log(f"aromni: note: dropped the {reply.trimmed} oldest turn(s) to fit the context", self.quiet)


QUIT = ("/quit", "/exit")
SLASH = {  # name: (handler, usage, what it does)
    "/image": (Repl.image, "/image PATH", "queue an image for the next turn"),
    "/audio": (Repl.audio, "/audio PATH [TEXT]", "send a speech turn (TEXT replaces the default instruction)"),
    "/save": (Repl.save, "/save PATH", "write the conversation as JSON (replayable with --batch)"),
    "/reset": (Repl.reset, "/reset", "forget the conversation"),
    "/help": (Repl.help, "/help", "this list"),
}
HELP = "commands:\n" + "\n".join(f"  {u:<20}{w}" for u, w in [("TEXT", "send a text turn (with any queued images)")]
                                  + [(u, w) for _, u, w in SLASH.values()] + [("/quit, /exit", "leave")])


def repl(talk, out_dir: str, json_out: bool, quiet: bool) -> int:
    """Read lines from the terminal or stdin until EOF or /quit; returns how many lines failed (each is
    reported on stderr and the next line is read)."""
    tty = sys.stdin.isatty()
    state = Repl(talk, out_dir, json_out, quiet, tty)
    if tty:
        log("aromni chat: type a message, /help for commands, /quit to leave", quiet)
    failed, n = 0, 0
    while True:
        try:
            line = input("you> ") if tty else sys.stdin.readline()
        except EOFError:
            break
        if not tty and line == "":
            break
        n += 1
        line = line.strip()
        if not line:
            continue
        try:
            if not state.line(line):
                break
        except (AromniError, OSError) as e:
            failed += 1
            log(f"aromni: error: {_why(e)}" if tty else f"aromni: error: <stdin> line {n}: {_why(e)}")
    return failed


def run(
    batch: Batch = None,
    out_dir: OutDir = None,
    images_out: Annotated[bool, typer.Option("--images/--no-images", help="Let the model answer with images.")
                          ] = True,
    speech_out: Annotated[bool, typer.Option("--speech/--no-speech", help="Let the model answer with speech.")
                          ] = True,
    max_new_tokens: MaxNew = None,
    greedy: Greedy = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    repetition_penalty: RepPenalty = None,
    cfg: Cfg = None,
    cfg_text: CfgText = None,
    cfg_image: CfgImage = None,
    image_temperature: ImageTemp = None,
    image_greedy: ImageGreedy = None,
    compat: Compat = False,
    batch_size: BatchSize = 8,
    compile: Compile = False,
    model: Model = None,
    seed: Seed = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    json_out: Json = False,
    quiet: Quiet = False,
    quant: Quant = "none",
    threads: Threads = None,
    host: Host = None,
    local: Local = False,
) -> None:
    """Multi-turn chat. Interactive: type text, /image PATH, /audio PATH, /save, /reset (/help); replies are
    printed, images and speech saved to --out-dir (default: the current directory). Lines piped on stdin are
    read as the same commands; a line that fails (an audio turn whose clip holds no speech, silence, a tone or
    noise, is refused) is reported on stderr with its line number and the next one
    is read, and the exit status is 2 at the end.

    --batch dialogs.jsonl: one dialog per line, {"dialog_id", "turns": [{"text" | "wav_path" | "audio",
    "image_paths" | "images", "reset"} or {"role": "assistant", "text"}]}; turns of all dialogs are decoded
    together; one JSON result per dialog line on stdout (with its "line"), files in --out-dir (default
    chat_out). A bad line (invalid JSON, a malformed dialog, a missing image or clip, a clip without speech, a
    turn too long for the context) is reported with its line number, its result holds "error", the other
    dialogs run, and the exit status is 2 at the end.

    With --host or $AROMNI_HOST a running 'aromni serve' decodes the turns: each request carries the whole
    conversation (with the replies' token ids), so the replies and files are the same as in-process for the
    same --seed; --batch sends several dialogs at once.
    """
    client = remote(host, local, model)
    if client is not None:
        opts = remote_options(locals(), images=images_out, speech=speech_out)
    else:
        opts = decode_options("chat", compat, max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature,
                              top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, cfg=cfg,
                              cfg_text=cfg_text, cfg_image=cfg_image, image_temperature=image_temperature,
                              image_greedy=image_greedy, images=images_out, speech=speech_out,
                              batch_size=batch_size, compile=compile)
    if batch is not None:
        dialogs, bad = read_dialogs(batch)
        src = "<stdin>" if batch == "-" else batch
        if dialogs:
            d = make_dir(out_dir or "chat_out")
            if client is not None:
                run_batch_remote(client, opts, dialogs, d, seed, quiet)
            else:
                run_batch(load_model(model, device, dtype, quiet, seed, quant), opts, dialogs, d, seed, quiet)
        results = [(d.line, {"dialog_id": d.id, "line": d.line, "turns": d.records}
                    | ({"error": d.error} if d.error else {})) for d in dialogs]
        results += [(n, {"line": n, "error": msg}) for n, msg in bad]
        failed = sorted(n for n, r in results if "error" in r)
        for _, rec in sorted(results, key=lambda x: x[0]):
            print_line(json.dumps(rec))
            if "error" in rec:
                log(f"aromni: error: {src}: {rec['error']}")
        if failed:
            raise InputError(f"{len(failed)} of {len(results)} dialog(s) failed (line{'s' * (len(failed) > 1)} "
                             f"{', '.join(map(str, failed))})", src)
        return
    if sys.stdin is None:
        raise AromniError("chat needs a terminal or lines on stdin")
    d = make_dir(out_dir or ".")
    if client is not None:
        talk = RemoteTalk(client, opts, seed)
    else:
        talk = LocalTalk(load_model(model, device, dtype, quiet, seed, quant), opts, seed)
    failed = repl(talk, d, json_out, quiet)
    if failed:
        raise AromniError(f"{failed} input line(s) failed (reported above); the others were processed")
