"""`aromni chat`: interactive REPL, or --batch dialogs.jsonl."""
from __future__ import annotations

import json
import os
import re
import sys
from typing import Optional

import typer
from typing_extensions import Annotated

from aromni.commands._common import Quant, Threads
from aromni.commands._common import Device, Dtype, Json, Model, Quiet, Seed, log
from aromni.commands._decode import (Batch, BatchSize, Cfg, CfgImage, CfgText, Compat, Compile, Greedy, ImageGreedy,
                                     ImageTemp, MaxNew, OutDir, RepPenalty, Temperature, TopK, TopP, decode_options,
                                     load_model, make_dir, one_line, print_line, read_jsonl, resolve_rel)
from aromni.core.errors import AromniError, InputError

HELP = """commands:
  TEXT            send a text turn (with any queued images)
  /image PATH     queue an image for the next turn
  /audio PATH [TEXT]  send a speech turn (TEXT replaces the default instruction)
  /save PATH      write the conversation as JSON (replayable with --batch)
  /reset          forget the conversation
  /help, /quit"""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))[:80] or "dialog"


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


# ----------------------------------------------------------------------------------------------
# batch mode
# ----------------------------------------------------------------------------------------------
def parse_dialog(obj: dict, n: int, src: str) -> tuple[str, list[dict]]:
    """A dialog -> (id, actions). Action: {"turn": {text, images, audio}, "reply": str | None, "reset": bool}.

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
        actions.append({"turn": {"text": text, "images": [resolve_rel(p, src) for p in imgs],
                                 "audio": resolve_rel(audio, src) if audio else None},
                        "reply": None, "reset": bool(t.get("reset", False))})
    return str(did), actions


def run_batch(omni, opts, dialogs: list, out_dir: str, seed: Optional[int], quiet: bool) -> None:
    from aromni.core import tasks
    from aromni.core.audio_io import load_audio
    from aromni.core.image_tokenizer import open_image

    s0 = tasks.base_seed(seed)
    sessions = [tasks.ChatSession(omni, opts, seed=s0 + i) for i in range(len(dialogs))]
    records: list[list[dict]] = [[] for _ in dialogs]
    ctx = None

    def load_turn(t: dict) -> dict:
        audio = None
        if t["audio"]:
            if omni.speech is None:
                raise AromniError(f"{omni.source or 'model'}: has no speech tokenizer for audio turns")
            audio = load_audio(t["audio"], omni.speech.sample_rate, resampler=omni.speech.resampler)
        return {"text": t["text"], "images": [open_image(p) for p in t["images"]] or None, "audio": audio}

    for r in range(max(len(a) for _, a in dialogs)):
        todo = []
        for i, (did, actions) in enumerate(dialogs):
            if r >= len(actions):
                continue
            act, s = actions[r], sessions[i]
            if act["reset"]:
                s.reset()
            turn = load_turn(act["turn"])
            if act["reply"] is not None:  # a given assistant reply joins the history as if generated
                from aromni.core.prompts import PromptContext
                ctx = ctx or PromptContext.of(omni)
                ids = s.user_turn(**turn)
                s.prompt(ids)
                s.commit(ids, list(ctx.encode(act["reply"])) + [omni.vocab.eom])
                records[i].append({"text": act["reply"], "given": True})
            else:
                todo.append((i, turn))
        if todo:
            replies = tasks.chat_step([sessions[i] for i, _ in todo], [t for _, t in todo])
            for (i, _), rep in zip(todo, replies):
                stem = f"{_safe(dialogs[i][0])}_t{r}"
                records[i].append(save_reply(omni, rep, out_dir, stem))
        log(f"aromni: round {r + 1}: {len(todo)} replies", quiet)
    for (did, _), rec in zip(dialogs, records):
        print_line(json.dumps({"dialog_id": did, "turns": rec}))


# ----------------------------------------------------------------------------------------------
# interactive
# ----------------------------------------------------------------------------------------------
def repl(omni, opts, out_dir: str, seed: Optional[int], json_out: bool, quiet: bool) -> None:
    from aromni.core import tasks
    from aromni.core.audio_io import load_audio
    from aromni.core.image_tokenizer import open_image

    tty = sys.stdin.isatty()
    session = tasks.ChatSession(omni, opts, seed=seed)
    images: list = []
    image_paths: list[str] = []
    log_turns: list[dict] = []
    if tty:
        log("aromni chat: type a message, /help for commands, /quit to leave", quiet)
    n = 0
    while True:
        try:
            line = input("you> ") if tty else sys.stdin.readline()
        except EOFError:
            break
        if not tty and line == "":
            break
        line = line.strip()
        if not line:
            continue
        turn: dict | None = None
        rec_turn: dict = {}
        try:
            if line.startswith("/"):
                cmd, _, arg = line.partition(" ")
                arg = arg.strip()
                if cmd in ("/quit", "/exit"):
                    break
                if cmd == "/help":
                    log(HELP)
                elif cmd == "/reset":
                    session.reset()
                    images, image_paths = [], []
                    log_turns.append({"reset": True})
                    log("aromni: conversation reset", quiet)
                elif cmd == "/image":
                    if not arg:
                        raise AromniError("/image needs a path")
                    images.append(open_image(arg))
                    image_paths.append(os.path.abspath(arg))
                    log(f"aromni: image queued ({len(images)})", quiet)
                elif cmd == "/audio":
                    path, _, text = arg.partition(" ")
                    if not path:
                        raise AromniError("/audio needs a path")
                    if omni.speech is None:
                        raise AromniError("this model has no speech tokenizer")
                    turn = {"audio": load_audio(path, omni.speech.sample_rate, resampler=omni.speech.resampler),
                            "text": text.strip() or None}
                    rec_turn = {"wav_path": os.path.abspath(path), **({"text": text.strip()} if text.strip() else {})}
                elif cmd == "/save":
                    if not arg:
                        raise AromniError("/save needs a path")
                    with open(arg, "w", encoding="utf-8") as f:  # one JSONL line: replay with --batch
                        f.write(json.dumps({"dialog_id": "chat", "turns": log_turns}) + "\n")
                    log(f"aromni: saved {arg}", quiet)
                else:
                    raise AromniError(f"unknown command {cmd} (/help)")
            else:
                turn = {"text": line}
                rec_turn = {"text": line}
            if turn is None:
                continue
            if images:
                turn["images"] = images
                rec_turn["image_paths"] = image_paths
            if log_turns and log_turns[-1] == {"reset": True}:
                log_turns.pop()
                rec_turn["reset"] = True
            reply = session.say(**turn)
            images, image_paths = [], []
            log_turns.append(rec_turn)
            rec = save_reply(omni, reply, out_dir, f"chat_t{n}")
            n += 1
            if json_out:
                print_line(json.dumps(rec))
            else:
                if reply.transcript:
                    log(f"(heard: {reply.transcript})", quiet)
                print_line(f"model> {reply.text}" if tty else one_line(reply.text))
                for p in rec["images"] + rec["audio"]:
                    log(f"aromni: saved {p}", quiet)
                if reply.trimmed:
                    log(f"aromni: note: dropped the {reply.trimmed} oldest turn(s) to fit the context", quiet)
        except (AromniError, OSError) as e:
            msg = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else str(e)
            if not tty:
                raise AromniError(msg) from None
            log(f"aromni: error: {msg}")


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
) -> None:
    """Multi-turn chat. Interactive: type text, /image PATH, /audio PATH, /save, /reset (/help); replies are
    printed, images and speech saved to --out-dir (default: the current directory). Lines piped on stdin are
    read as the same commands.

    --batch dialogs.jsonl: one dialog per line, {"dialog_id", "turns": [{"text" | "wav_path" | "audio",
    "image_paths" | "images", "reset"} or {"role": "assistant", "text"}]}; turns of all dialogs are decoded
    together; one JSON result per dialog on stdout, files in --out-dir (default chat_out).
    """
    opts = decode_options("chat", compat, max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature,
                          top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, cfg=cfg, cfg_text=cfg_text,
                          cfg_image=cfg_image, image_temperature=image_temperature,
                          image_greedy=image_greedy, images=images_out,
                          speech=speech_out, batch_size=batch_size, compile=compile)
    if batch is not None:
        dialogs = [parse_dialog(o, n, batch) for n, o in enumerate(read_jsonl(batch, "dialogs"), 1)]
        d = make_dir(out_dir or "chat_out")
        omni = load_model(model, device, dtype, quiet, seed, quant)
        run_batch(omni, opts, dialogs, d, seed, quiet)
        return
    if sys.stdin is None:
        raise AromniError("chat needs a terminal or lines on stdin")
    d = make_dir(out_dir or ".")
    omni = load_model(model, device, dtype, quiet, seed, quant)
    repl(omni, opts, d, seed, json_out, quiet)
