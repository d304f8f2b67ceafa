"""Prompt templates (docs/formats.md) and training examples built from them.

Every string segment is encoded on its own and the pieces are concatenated, exactly as the reference
does (``encode(s, add_special_tokens=False)`` per segment; leading spaces belong to the segment).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import AromniError, InputError
from .tokens import audio_block, image_block, split_segments
from .vocab import VocabLayout

DEFAULT_INSTRUCTIONS = {
    "tts": "Convert this text into speech.",
    "asr": "Can you please convert this speech into written text?",
    "caption": "Describe this image.",
    "t2i": "Create a picture that matches the essence of this text.",
    "chat": "Please acknowledge the user's vocal input, create a textual response.",
    "s2i": "Please transcribe the user's vocal input, create a picture of it.",
}
TASKS = ("tts", "asr", "caption", "t2i", "s2i", "text", "chat")


@dataclass
class PromptContext:
    """What a prompt builder needs: the layout, a text encoder and per-model overrides."""

    vocab: VocabLayout
    encode: Callable[[str], list[int]] | None  # str -> joint ids; None without a text tokenizer
    instructions: dict | None = None

    @classmethod
    def of(cls, omni) -> "PromptContext":
        return cls(omni.vocab, omni.text.encode, (omni.prompts or {}).get("instructions"))

    def instruction(self, task: str, override: str | None = None) -> str:
        if override is not None:
            return override
        return (self.instructions or {}).get(task, DEFAULT_INSTRUCTIONS.get(task, ""))


def _seg(ctx: PromptContext, *parts) -> list[int]:
    """Concatenate parts: str segments are encoded one by one, lists of ids are taken as they are."""
    out: list[int] = []
    for p in parts:
        if isinstance(p, str):
            if p:
                if ctx.encode is None:
                    raise AromniError(f"no text tokenizer is configured to encode {p!r}")
                out += list(ctx.encode(p))
        else:
            out += [int(t) for t in p]
    return out


def tts_prompt(ctx: PromptContext, text: str | list[int], instruction: str | None = None,
               bos: bool = True) -> list[int]:
    v = ctx.vocab
    return _seg(ctx, [v.bos] if bos else [], "USER:", ctx.instruction("tts", instruction), "This is input: ", text,
                [v.eoh], "GPT:")


def asr_prompt(ctx: PromptContext, audio_codes, instruction: str | None = None, bos: bool = True) -> list[int]:
    v = ctx.vocab
    return _seg(ctx, [v.bos] if bos else [], "USER:", ctx.instruction("asr", instruction), audio_block(audio_codes, v),
                [v.eoh], "GPT:")


def caption_prompt(ctx: PromptContext, image_codes, instruction: str | None = None, bos: bool = True) -> list[int]:
    v = ctx.vocab
    return _seg(ctx, [v.bos] if bos else [], "USER:", image_block(image_codes, v),
                ctx.instruction("caption", instruction), [v.eoh], "GPT:")


def t2i_prompt(ctx: PromptContext, text: str | list[int], instruction: str | None = None,
               bos: bool = True) -> list[int]:
    """Note the leading spaces in " This is input: " and " GPT:", which differ from TTS.
    The image decoder appends ``<boi>`` itself."""
    v = ctx.vocab
    return _seg(ctx, [v.bos] if bos else [], "USER:", ctx.instruction("t2i", instruction), " This is input: ", text,
                [v.eoh], " GPT:")


def chat_turn(ctx: PromptContext, text: str | list[int] | None = None, image_codes: list | None = None,
              audio_codes=None, append: str | list[int] | None = None) -> list[int]:
    """One user turn: "USER:" + images + [<boa> audio <eoa>] + text/append-text + <eoh> + "GPT:".
    Text may be given as a string or as text ids."""
    v = ctx.vocab
    parts: list = ["USER:"]
    for codes in image_codes or []:
        parts.append(image_block(codes, v))
    if audio_codes is not None:
        parts.append(audio_block(audio_codes, v))
        parts.append(append if append is not None else ctx.instruction("chat"))
    elif text is not None:
        parts.append(text)
    return _seg(ctx, *parts, [v.eoh], "GPT:")


def chat_prompt(ctx: PromptContext, history: list[int], turn: list[int]) -> list[int]:
    """``<bos>`` + history' + turn. History has leading/trailing bos/eos stripped and ends with ``<eom>``."""
    v = ctx.vocab
    h = list(history)
    while h and h[0] in (v.bos, v.eos):
        h.pop(0)
    while h and h[-1] in (v.bos, v.eos):
        h.pop()
    if h and h[-1] != v.eom:
        h.append(v.eom)
    return [v.bos] + h + turn


def s2i_prompt(ctx: PromptContext, audio_codes, instruction: str | None = None) -> list[int]:
    """Speech -> image: a chat turn with audio and the "transcribe ... create a picture" append-text."""
    return [ctx.vocab.bos] + chat_turn(ctx, audio_codes=audio_codes, append=ctx.instruction("s2i", instruction))


# ----------------------------------------------------------------------------------------------
# A bare input in a task's template (what `aromni generate --task T` sends)
# ----------------------------------------------------------------------------------------------
# What each task takes, and the span the template opens for the answer (the answer continues it)
TASK_INPUTS = {
    "asr": ("one speech span (<boa> ids <eoa>)", None),
    "s2i": ("one speech span (<boa> ids <eoa>)", "ins"),
    "caption": ("one image span (<boi> ids <eoi>)", None),
    "tts": ("text", "boa"),
    "t2i": ("text", "boi"),
    "chat": ("text, images and at most one speech span", None),
    "text": ("text", None),
}


def task_prompt(ctx: PromptContext, task: str, ids: list[int], compat: bool = False,
                source: str = "token stream") -> tuple[list[int], list[int]]:
    """A bare input (joint ids, no ``<s>``) in the model's prompt template for ``task``: returns
    ``(prompt, opened)``, where ``opened`` is the marker the template ends with (``<boa>`` for tts,
    ``<boi>`` for t2i, ``<-Ins->`` for s2i; none under ``compat`` for tts and s2i, as the task API does), the
    start of the answer. An input that already starts with ``<s>`` is a prompt: it is returned as it is.

    asr: ``<s>USER:{instruction}<boa>…<eoa><eoh>GPT:``; caption: ``<s>USER:<boi>…<eoi>{instruction}<eoh>GPT:``;
    tts: ``<s>USER:{instruction}This is input: {text}<eoh>GPT:<boa>``; t2i: the same with " This is input: " and
    " GPT:", then ``<boi>``; s2i: a speech chat turn with the s2i instruction, then ``<-Ins->``; chat:
    ``<s>USER:{images}{speech}{text}<eoh>GPT:``; text: ``<s>{text}``."""
    if task not in TASK_INPUTS:
        raise InputError(f"unknown task {task!r} (known: {', '.join(TASK_INPUTS)})")
    v = ctx.vocab
    if ids and ids[0] == v.bos:
        return list(ids), []
    want, opens = TASK_INPUTS[task]
    segs = split_segments(ids, v, source)
    kinds = [s.kind for s in segs]
    if "special" in kinds:
        raise InputError(f"{task} takes {want}; the input holds control tokens (send a whole prompt, starting "
                         "with <s>, or send it unwrapped as a raw prompt)", source)
    text = [t for s in segs if s.kind == "text" for t in s.ids]
    images = [s.codes(v) for s in segs if s.kind == "image"]
    audio = [s.codes(v) for s in segs if s.kind == "audio"]
    build: dict[str, Callable[[PromptContext, list[int]], list[int]]]  # (context, codes or text ids) -> prompt
    if task in ("asr", "s2i", "caption"):
        kind = "image" if task == "caption" else "audio"
        if kinds != [kind]:
            raise InputError(f"{task} takes {want}; the input holds {_describe(kinds)}", source)
        build = {"asr": asr_prompt, "s2i": s2i_prompt, "caption": caption_prompt}
        prompt = build[task](ctx, segs[0].codes(v))
    elif task in ("tts", "t2i", "text"):
        if kinds != ["text"] and not (task == "text" and not kinds):
            raise InputError(f"{task} takes {want}; the input holds {_describe(kinds)}", source)
        build = {"tts": tts_prompt, "t2i": t2i_prompt, "text": lambda c, t: [v.bos] + t}
        prompt = build[task](ctx, text)
    else:  # chat
        if len(audio) > 1 or not kinds:
            raise InputError(f"chat takes {want}; the input holds {_describe(kinds)}", source)
        if audio:
            turn = chat_turn(ctx, image_codes=images, audio_codes=audio[0], append=text or None)
        else:
            turn = chat_turn(ctx, text=text, image_codes=images)
        prompt = chat_prompt(ctx, [], turn)
    if opens is None or (compat and task in ("tts", "s2i")):
        return prompt, []
    return prompt + [getattr(v, opens)], [getattr(v, opens)]


def _describe(kinds: list[str]) -> str:
    if not kinds:
        return "nothing"
    names = {"text": "text", "image": "an image span", "audio": "a speech span", "special": "control tokens"}
    return ", ".join(names[k] for k in kinds)


# ----------------------------------------------------------------------------------------------
# Training examples: prompt + response + end marker, with the response length for tail weighting
# ----------------------------------------------------------------------------------------------
@dataclass
class Example:
    ids: list[int]
    task: str
    response_len: int  # tokens of the response (for the reference's tail up-weighting)


def build_example(ctx: PromptContext, task: str, *, text: str | None = None, image_codes=None, audio_codes=None,
                  transcript: str | None = None, instruction: str | None = None) -> Example:
    """One training sequence in the model's templates; ends with ``<eom>``.

    tts: text -> <boa> audio <eoa>;  asr: audio -> text;  caption: image -> text;  t2i: text -> <boi> image <eoi>;
    s2i: audio -> <-Ins-> transcript <-Res-> <boi> image <eoi>;  text: plain text after <bos>.
    """
    v = ctx.vocab
    if task == "tts":
        prompt, resp = tts_prompt(ctx, _text(text, task), instruction), audio_block(audio_codes, v)
    elif task == "asr":
        prompt, resp = asr_prompt(ctx, audio_codes, instruction), _seg(ctx, _text(text, task))
    elif task == "caption":
        prompt, resp = caption_prompt(ctx, image_codes, instruction), _seg(ctx, _text(text, task))
    elif task == "t2i":
        prompt, resp = t2i_prompt(ctx, _text(text, task), instruction), image_block(image_codes, v)
    elif task == "s2i":
        prompt = s2i_prompt(ctx, audio_codes, instruction)
        resp = [v.ins] + _seg(ctx, _text(transcript or text, task)) + [v.res] + image_block(image_codes, v)
    elif task == "text":
        prompt, resp = [v.bos], _seg(ctx, _text(text, task))
    else:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    resp = resp + [v.eom]
    return Example(prompt + resp, task, len(resp))


def _text(text: str | None, task: str) -> str:
    if text is None:
        raise ValueError(f"a {task} example needs text")
    return text
