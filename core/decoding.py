"""Decoding policy: per-task options, allowed-token masks, logit processors and the text/image/speech state machine.

One row of a batch is always in one of three states (docs/decoding.md):

- TEXT: text and control tokens. ``<boi>`` only when images are allowed and a whole image still fits, ``<boa>``
  only when speech output is allowed. Strategy: greedy or sampling (temperature, top-k, top-p, repetition penalty).
- IMAGE: image codes only, exactly ``vocab.image_tokens`` of them, then ``<eoi>`` is forced (no model choice).
  Strategy: classifier-free guidance over three streams, then sampling.
- SPEECH: audio codes and ``<eoa>`` only, at most ``max_speech_tokens`` codes, then ``<eoa>`` is forced.

Greedy vs sampling follows AR-Omni's switching rule: the previous token ``<-Ins->`` or ``<boa>`` turns greedy on,
``<-Res->`` or ``<eoa>`` turns it off; a new text segment after an image starts again at the default.

``compat=True`` reproduces the reference text step exactly: mask = everything but image codes, ``<boi>``
cut-off, repetition penalty over the whole context, temperature, top-p, selector; no speech mask or cap.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields, replace

import torch

from .checks import RANGES, check_number
from .errors import AromniError
from .vocab import VocabLayout

TEXT, IMAGE, SPEECH = 0, 1, 2
STATE_NAMES = ("text", "image", "speech")

# rows of the mask table
M_TEXT, M_TEXT_NO_BOI, M_IMAGE, M_SPEECH = 0, 1, 2, 3


@dataclass
class DecodeOptions:
    """Everything that decides which token comes next. ``options_for(task)`` fills per-task defaults."""

    task: str = "chat"
    max_new_tokens: int = 2048
    max_total_tokens: int | None = None  # cap on prompt + output (the reference ASR's max_seq_len)
    # TEXT (and SPEECH) strategy
    greedy: bool = False  # default selector mode
    markers: bool = True  # greedy after <-Ins->/<boa>, sampling after <-Res->/<eoa>
    temperature: float = 1.2
    top_p: float = 0.96
    top_k: int = 0
    repetition_penalty: float = 1.2
    penalty_scope: str = "response"  # "response": text generated so far; "context": every token, prompt included
    # what TEXT may emit
    images: bool = True  # <boi> allowed
    speech: bool = True  # <boa> allowed
    controls: tuple = ("eos", "eom", "ins", "res")  # control tokens allowed in TEXT
    stop: tuple = ("eos", "eom")  # emitted, then the row ends
    max_speech_tokens: int = 1024  # codes per speech span (40/s: 25.6 s)
    chunk_words: int = 0  # tts: speak each sentence in pieces of at most this many words (0: whole sentences)
    speech_pad: int = 0  # tts: frames of the codec's silence code decoded around each speech span, then cut off
    lead_in: float = 0.0  # tts: seconds of silence before the speech
    # tts with chunk_words: a piece of N words speaks at most base + N * per_word seconds (espeak-ng's corpus speaks
    # ~0.3 s a word; a model trained on slower speech sets its own in its bundle's decode defaults)
    piece_seconds: tuple = (0.5, 0.5)
    end_after: str | None = None  # "image" | "speech": the row ends after its first such span
    force_after: tuple = ()  # ((token name, forced next token name), ...), e.g. (("res", "boi"),)
    max_text_tokens: int | None = None  # per text segment; then ``text_cap_then`` is forced (or the row ends)
    text_cap_then: str | None = None
    # IMAGE strategy
    image_greedy: bool = False
    image_temperature: float = 1.0
    image_top_p: float = 0.96
    image_top_k: int = 0
    cfg: bool = True
    cfg_text: float = 3.07
    cfg_image: float = 1.15
    # best of N (t2i, s2i, tts): candidate 0 as above, the rest sampled; the model's own caption/ASR picks (rerank.py)
    candidates: int = 1
    # engine
    compat: bool = False
    batch_size: int = 8
    compile: bool = False  # static-cache decode step under torch.compile (CUDA graphs); see generate.StaticStep
    # names the caller chose (options_for overrides, replace): a model's own defaults never change these
    explicit: frozenset = frozenset()

    def replace(self, **kw) -> "DecodeOptions":
        return replace(self, explicit=self.explicit | set(kw), **kw)

    @property
    def use_cfg(self) -> bool:
        return self.cfg and (self.cfg_text != 1.0 or self.cfg_image != 1.0)

    def check(self) -> "DecodeOptions":
        for f in fields(self):
            if f.name in RANGES:
                check_number(f.name, getattr(self, f.name))
        if self.penalty_scope not in ("response", "context"):
            raise AromniError(f"unknown penalty scope {self.penalty_scope!r}")
        if self.end_after not in (None, "image", "speech"):
            raise AromniError(f"unknown end_after {self.end_after!r}")
        ps = self.piece_seconds
        if (not isinstance(ps, (list, tuple)) or len(ps) != 2
                or not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in ps)):
            raise AromniError(f"piece_seconds must be two finite seconds >= 0, base and per word (got {ps!r})")
        self.piece_seconds = (float(ps[0]), float(ps[1]))
        return self


# Per-task defaults (the reference scripts' values where they exist; docs/decoding.md).
TASK_DEFAULTS: dict[str, dict] = {
    # open chat: sampling by default, greedy inside <-Ins->…<-Res-> and <boa>…<eoa>
    "chat": dict(),
    "text": dict(),
    # pretrain scripts: greedy, no images, extra EOS <eom>
    "asr": dict(greedy=True, images=False, speech=False, controls=("eos", "eom"), max_new_tokens=256,
                repetition_penalty=1.0),
    "caption": dict(greedy=True, images=False, speech=False, controls=("eos", "eom"), max_new_tokens=256,
                    repetition_penalty=1.0),
    # the prompt ends in <boa> (so greedy); one speech span, then stop
    "tts": dict(greedy=True, images=False, speech=True, controls=("eos", "eom"), end_after="speech",
                max_new_tokens=1025, repetition_penalty=1.0),
    # the prompt ends in <boi>; exactly one image. cfg_image 1.0 keeps the reference's effective guidance for
    # text-only prompts (see generate.cfg_streams); raise it to add guidance from the [<bos>,<boi>] stream.
    "t2i": dict(images=True, speech=False, end_after="image", cfg_image=1.0),
    # the prompt ends in <-Ins->: greedy transcript, <-Res->, then the image is forced
    "s2i": dict(images=True, speech=False, end_after="image", force_after=(("res", "boi"),), max_text_tokens=128,
                text_cap_then="res", cfg_image=1.0),
}
# --compat: the reference scripts' settings
COMPAT_DEFAULTS: dict[str, dict] = {
    "chat": dict(max_new_tokens=4096),
    "text": dict(max_new_tokens=4096),
    "asr": dict(max_new_tokens=4096, max_total_tokens=1024, repetition_penalty=1.2),
    "caption": dict(max_new_tokens=128, repetition_penalty=1.2),
    "tts": dict(max_new_tokens=1024, end_after=None, repetition_penalty=1.2),
    "t2i": dict(cfg_image=1.32),
    "s2i": dict(max_new_tokens=4096, end_after=None, force_after=(), max_text_tokens=None, text_cap_then=None,
                cfg_image=1.15),
}
TASKS = tuple(TASK_DEFAULTS)


def options_for(task: str = "chat", compat: bool = False, **overrides) -> DecodeOptions:
    """Defaults for ``task`` (``compat``: the reference's), then ``overrides`` (None values are ignored).

    An explicit ``greedy`` fixes the mode for the whole response (``markers`` off) unless ``markers`` is also
    given; ``greedy=True, markers=True`` is the reference chat's ``--greedy`` (greedy by default, still
    switching on the markers). A CFG scale implies ``cfg=True`` unless ``cfg`` is also given."""
    if task not in TASK_DEFAULTS:
        raise AromniError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    kw = dict(TASK_DEFAULTS[task])
    if compat:
        kw.update(COMPAT_DEFAULTS.get(task, {}))
        kw.update(compat=True, penalty_scope="context", top_k=0, image_top_k=0)
    known = {f.name for f in fields(DecodeOptions)}
    bad = [k for k in overrides if k not in known]
    if bad:
        raise TypeError(f"unknown decode options {bad}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if "greedy" in given and "markers" not in given:
        given["markers"] = False
    if ("cfg_text" in given or "cfg_image" in given) and "cfg" not in given:
        given["cfg"] = True  # a guidance scale asks for guidance, whatever the model's own default
    kw.update(given)
    return DecodeOptions(task=task, explicit=frozenset(given), **kw).check()


# options a model may set for itself (aromni.json "decode": {task: {name: value}}): the sampling knobs
MODEL_DEFAULTABLE = ("greedy", "temperature", "top_p", "top_k", "repetition_penalty", "image_greedy",
                     "image_temperature", "image_top_p", "image_top_k", "cfg", "cfg_text", "cfg_image", "candidates",
                     "chunk_words", "speech_pad", "lead_in", "piece_seconds")


def check_model_defaults(table: dict, where: str = "model") -> dict:
    """Validate a model's per-task decode defaults ({task: {option: value}}); returns it."""
    if not isinstance(table, dict):
        raise AromniError(f"{where}: decode defaults must be a mapping of task -> options")
    for task, opts in table.items():
        if task not in TASK_DEFAULTS or not isinstance(opts, dict):
            raise AromniError(f"{where}: decode defaults for unknown task {task!r} (known: {', '.join(TASKS)})")
        bad = [k for k in opts if k not in MODEL_DEFAULTABLE]
        if bad:
            raise AromniError(f"{where}: decode option(s) {', '.join(map(repr, bad))} cannot be a model default "
                              f"(allowed: {', '.join(MODEL_DEFAULTABLE)})")
        replace(DecodeOptions(task=task, **TASK_DEFAULTS[task]), **opts).check()
    return table


def with_model_defaults(opts: DecodeOptions, table: dict | None) -> DecodeOptions:
    """``opts`` with a model's own defaults for its task wherever the caller chose nothing (not under
    ``compat``, which reproduces the reference's settings)."""
    if opts.compat or not table:
        return opts
    kw = {k: v for k, v in (table.get(opts.task) or {}).items() if k not in opts.explicit}
    return replace(opts, **kw) if kw else opts


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------
def build_masks(vocab: VocabLayout, opts: DecodeOptions, device=None) -> torch.Tensor:
    """Allowed-token table [4, V] (bool) indexed by M_TEXT, M_TEXT_NO_BOI, M_IMAGE, M_SPEECH."""
    V = vocab.vocab_size
    m = torch.zeros(4, V, dtype=torch.bool)
    img = slice(vocab.image_offset, vocab.image_offset + vocab.image_codes)
    aud = slice(vocab.audio_offset, vocab.audio_offset + vocab.audio_codes)
    if opts.compat:
        # reference: EOS ∪ text ∪ every "special" name: only image codes are banned, BOI always allowed
        m[M_TEXT] = True
        m[M_TEXT, img] = False
        m[M_SPEECH] = m[M_TEXT]  # no speech mask in the reference
    else:
        m[M_TEXT, vocab.text_start: vocab.text_end] = True
        for name in set(opts.controls) | set(opts.stop):
            m[M_TEXT, vocab.specials[name]] = True
        m[M_TEXT, vocab.boi] = opts.images
        m[M_TEXT, vocab.boa] = opts.speech
        m[M_SPEECH, aud] = True
        m[M_SPEECH, vocab.eoa] = True
    m[M_TEXT_NO_BOI] = m[M_TEXT]
    m[M_TEXT_NO_BOI, vocab.boi] = False
    m[M_IMAGE, img] = True
    return m.to(device) if device is not None else m


# ----------------------------------------------------------------------------------------------
# Logit processors (rows may differ: every parameter is a [B] tensor)
# ----------------------------------------------------------------------------------------------
NEG_INF = float("-inf")


def apply_mask(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """logits [B, V], allowed [B, V] bool."""
    return logits.masked_fill(~allowed, NEG_INF)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """HF/CTRL penalty on tokens in ``seen`` [B, V]: positive logits divided, negative multiplied by ``penalty`` [B]."""
    p = penalty.view(-1, 1)
    pen = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen & (p != 1.0), pen, logits)


def apply_top_k(logits: torch.Tensor, k: torch.Tensor, kmax: int | None = None) -> torch.Tensor:
    """Keep the ``k[b]`` largest logits of row b (0 = all). ``kmax``: the largest k when the caller knows it
    (saves reading it back from the device)."""
    kmax = int(k.max()) if kmax is None else kmax
    if kmax <= 0:
        return logits
    kmax = min(kmax, logits.shape[-1])
    top = torch.topk(logits, kmax, dim=-1).values  # [B, kmax] descending
    kk = k.clamp(1, kmax) - 1
    thresh = top.gather(1, kk.view(-1, 1))
    thresh = torch.where(k.view(-1, 1) > 0, thresh, torch.full_like(thresh, NEG_INF))
    return logits.masked_fill(logits < thresh, NEG_INF)


def apply_top_p(logits: torch.Tensor, p: torch.Tensor, pmin: float | None = None) -> torch.Tensor:
    """Nucleus filter as HF's TopPLogitsWarper: drop the low tail whose mass is <= 1 - p; keep at least one.
    ``pmin``: the smallest p when the caller knows it (saves reading it back from the device)."""
    if (float(p.min()) if pmin is None else pmin) >= 1.0:
        return logits
    sorted_logits, idx = torch.sort(logits, dim=-1, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - p).view(-1, 1)
    remove[:, -1] = False
    remove = remove.scatter(1, idx, remove)
    return logits.masked_fill(remove, NEG_INF)


def cfg_mix(full: torch.Tensor, image: torch.Tensor, uncond: torch.Tensor, g_text: float,
            g_image: float) -> torch.Tensor:
    """Instruct-CFG on raw logits: ``U + g_img (I - U) + g_txt (F - I)`` (docs/decoding.md)."""
    return uncond + g_image * (image - uncond) + g_text * (full - image)


def sample_rows(probs: torch.Tensor, generators: list) -> torch.Tensor:
    """One draw per row from ``probs`` [B, V], each row's randomness from its own generator (batch composition
    never changes a row). The rows' exponential noise is filled row by row, then one batched argmax of
    ``probs / noise`` picks every token: the same draw ``torch.multinomial(probs[b], 1, generator=g)`` makes."""
    noise = torch.empty_like(probs)
    for b, g in enumerate(generators):
        noise[b].exponential_(1, generator=g)
    return (probs / noise).argmax(dim=-1)


def make_generators(seeds: list[int | None], device) -> list[torch.Generator]:
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s) if s is not None else random.SystemRandom().randrange(2**63))
        gens.append(g)
    return gens


# ----------------------------------------------------------------------------------------------
# Per-row state machine
# ----------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One sequence being decoded."""

    mode: int = TEXT
    count: int = 0  # codes in the current image/speech span
    text_run: int = 0  # tokens in the current text segment
    greedy: bool = False
    prev: int = -1  # previous token (the prompt's last at the start)
    budget: int = 0  # tokens this row may still generate
    done: bool = False
    finish: str = ""  # "stop" | "length" | "image" | "speech" | "context"
    forced: list = field(default_factory=list)
    out: list = field(default_factory=list)
    # per token of ``out``: its natural log-probability under the masked (and penalised / guided) logits at
    # temperature 1, before top-k/top-p; None for a forced token (the model had no choice)
    logprobs: list = field(default_factory=list)


def initial_mode(prompt: list[int], vocab: VocabLayout) -> tuple[int, int]:
    """(state, codes so far) implied by the prompt's tail: an unclosed ``<boi>`` or ``<boa>`` continues that span."""
    for i in range(len(prompt) - 1, -1, -1):
        t = prompt[i]
        if t == vocab.boi:
            return IMAGE, len(prompt) - 1 - i
        if t == vocab.boa:
            return SPEECH, len(prompt) - 1 - i
        if t in (vocab.eoi, vocab.eoa) or not (vocab.is_image(t) or vocab.is_audio(t)):
            return TEXT, 0
    return TEXT, 0


class Policy:
    """The state machine of docs/decoding.md with this engine's fixes; one instance per ``generate`` call."""

    def __init__(self, vocab: VocabLayout, opts: DecodeOptions):
        self.v, self.o = vocab, opts
        sp = vocab.specials
        self.stop = {sp[n] for n in opts.stop}
        self.force_after = {sp[a]: sp[b] for a, b in opts.force_after}
        self.cap_then = sp[opts.text_cap_then] if opts.text_cap_then else None
        self.greedy_on = {vocab.ins, vocab.boa}
        self.greedy_off = {vocab.res, vocab.eoa}

    def new_row(self, prompt: list[int], budget: int) -> Row:
        mode, count = initial_mode(prompt, self.v)
        return Row(mode=mode, count=count, greedy=self.o.greedy, prev=prompt[-1] if prompt else -1, budget=budget)

    def update_selector(self, r: Row) -> None:
        """The selector looks only at the previous token; the greedy update comes first, then the sampling one."""
        if self.o.markers:
            if r.prev in self.greedy_on:
                r.greedy = True
            if r.prev in self.greedy_off:
                r.greedy = False

    def mask_index(self, r: Row) -> int:
        if r.mode == IMAGE:
            return M_IMAGE
        if r.mode == SPEECH and not self.o.compat:
            return M_SPEECH
        # a whole image (<boi>, codes, <eoi>) must still fit in the row's budget
        if self.o.compat:  # reference: BOI banned once length >= max_seq_len - (image_tokens + 2), if images are on
            return M_TEXT if (r.budget > self.v.image_tokens + 2 or not self.o.images) else M_TEXT_NO_BOI
        return M_TEXT if (r.budget >= self.v.image_tokens + 2 and self.o.images) else M_TEXT_NO_BOI

    def advance(self, r: Row, tok: int) -> None:
        """Record ``tok`` for row ``r`` and move the machine (may queue forced tokens or end the row)."""
        v, o = self.v, self.o
        r.out.append(tok)
        r.prev = tok
        r.budget -= 1
        mode = r.mode
        if mode == SPEECH and o.compat and tok != v.eoa and not v.is_audio(tok):
            mode = r.mode = TEXT  # the reference has no speech state: a non-audio token just continues as text
        if mode == IMAGE:
            if tok == v.eoi:
                r.mode, r.count, r.text_run, r.greedy = TEXT, 0, 0, o.greedy  # state is not carried across an image
                if o.end_after == "image":
                    return self._end(r, "image")
            else:
                r.count += 1
                if r.count >= v.image_tokens:
                    r.forced.append(v.eoi)
        elif mode == SPEECH:
            if tok == v.eoa:
                r.mode, r.count, r.text_run = TEXT, 0, 0
                if o.end_after == "speech":
                    return self._end(r, "speech")
            else:
                r.count += 1
                if not o.compat and not r.forced and (r.count >= o.max_speech_tokens or r.budget <= 1):
                    r.forced.append(v.eoa)  # speech cap (and keep one token for <eoa>)
        else:
            if tok in self.stop:
                return self._end(r, "stop")
            if tok == v.boi:
                if not o.images and o.compat:
                    return self._end(r, "stop")  # the reference switches to images and fails
                r.mode, r.count = IMAGE, 0
            elif tok == v.boa:
                r.mode, r.count = SPEECH, 0
            else:
                r.text_run += 1
                if (tok not in self.force_after and o.max_text_tokens is not None
                        and r.text_run >= o.max_text_tokens and not r.forced):
                    if self.cap_then is None:
                        return self._end(r, "length")
                    r.forced.append(self.cap_then)
        if tok in self.force_after and not r.forced:
            r.forced.append(self.force_after[tok])
        if r.budget <= 0 and not r.done:
            self._end(r, "length")

    @staticmethod
    def _end(r: Row, why: str) -> None:
        r.done, r.finish = True, why
        r.forced.clear()


# ----------------------------------------------------------------------------------------------
# One step: logits of live rows -> next tokens
# ----------------------------------------------------------------------------------------------
class Chooser:
    """Picks each row's next token from its logits (or its forced queue) and moves the rows' state machines.

    Holds what persists across steps: the mask table, per-row generators and the repetition-penalty sets.
    """

    def __init__(self, vocab: VocabLayout, opts: DecodeOptions, rows: list[Row], prompts: list[list[int]],
                 seeds: list[int | None], device):
        self.v, self.o, self.rows = vocab, opts, rows
        self.policy = Policy(vocab, opts)
        self.masks = build_masks(vocab, opts, device)
        self.gens = make_generators(seeds, device)
        self.device = device
        B, V = len(rows), vocab.vocab_size
        self.seen = torch.zeros(B, V, dtype=torch.bool, device=device)
        if opts.penalty_scope == "context":  # the reference penalises every token of the context
            for b, p in enumerate(prompts):
                if p:
                    self.seen[b, torch.tensor(p, device=device)] = True
        self._text = torch.zeros(V, dtype=torch.bool)
        self._text[vocab.text_start: vocab.text_end] = True
        # [lo, hi) holding every id each mask allows: the LM head only needs those rows of the output matrix
        self._spans = []
        for m in self.masks.cpu():
            nz = torch.nonzero(m).flatten()
            self._spans.append((int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0))

    def span(self) -> tuple[int, int] | None:
        """Vocabulary span the next ``choose`` can pick from (over rows that need logits), or None: all."""
        lo: int | None = None
        hi = 0
        for r in self.rows:
            if r.done or r.forced:
                continue
            a, b = self._spans[self.policy.mask_index(r)]
            lo, hi = (a, b) if lo is None else (min(lo, a), max(hi, b))
        if lo is None:
            return (0, 1)  # no row looks at these logits
        return None if hi - lo > 0.75 * self.v.vocab_size else (lo, hi)  # not worth a partial head

    def choose(self, logits: torch.Tensor, cfg: tuple | None = None) -> list[int | None]:
        """logits [B, V] (fp32, the full-context stream); ``cfg`` = (image-stream, uncond-stream) logits [B, V]
        for rows in IMAGE. Returns the next token per row (None for finished rows)."""
        o, rows = self.o, self.rows
        out: list[int | None] = [None] * len(rows)
        pick = []
        for b, r in enumerate(rows):
            if r.done:
                continue
            if r.forced:
                out[b] = r.forced.pop(0)
                r.logprobs.append(None)
            else:
                self.policy.update_selector(r)
                pick.append(b)
        if pick:
            idx = torch.tensor(pick, device=logits.device)
            x = logits.index_select(0, idx)
            modes = [rows[b].mode for b in pick]
            if cfg is not None and IMAGE in modes:
                im = [i for i, m in enumerate(modes) if m == IMAGE]
                ii = idx[im]
                x[im] = cfg_mix(x[im], cfg[0].index_select(0, ii), cfg[1].index_select(0, ii), o.cfg_text, o.cfg_image)
            mi = torch.tensor([self.policy.mask_index(rows[b]) for b in pick], device=x.device)
            x = apply_mask(x, self.masks.index_select(0, mi))
            pen = [o.repetition_penalty if (m == TEXT or (m == SPEECH and o.compat)) else 1.0 for m in modes]
            if any(p != 1.0 for p in pen):
                x = apply_repetition_penalty(x, self.seen.index_select(0, idx), torch.tensor(pen, device=x.device))
            greedy = [o.image_greedy if m == IMAGE else rows[b].greedy for b, m in zip(pick, modes)]
            tok = x.argmax(dim=-1)
            samp = [i for i, g in enumerate(greedy) if not g]
            if samp:
                img = [modes[i] == IMAGE for i in samp]
                xs = x[samp]

                def per_row(image_value, text_value):  # host values per sampled row, then one tensor
                    vals = [image_value if m else text_value for m in img]
                    return vals, torch.tensor(vals, device=x.device)

                xs = xs / per_row(o.image_temperature, o.temperature)[1].view(-1, 1)
                ks, k = per_row(o.image_top_k, o.top_k)
                xs = apply_top_k(xs, k.long(), max(ks))
                ps, p = per_row(o.image_top_p, o.top_p)
                xs = apply_top_p(xs, p, min(ps))
                tok[samp] = sample_rows(xs.softmax(dim=-1), [self.gens[pick[i]] for i in samp])
            lp = x.gather(1, tok.view(-1, 1)).squeeze(1) - torch.logsumexp(x, dim=-1)
            for b, t, p in zip(pick, tok.tolist(), lp.tolist()):
                out[b] = t
                rows[b].logprobs.append(p)
        for b, t in enumerate(out):
            if t is not None:
                self.observe(b, t)
        return out

    def observe(self, b: int, tok: int) -> None:
        r = self.rows[b]
        if self.o.penalty_scope == "context" or (r.mode == TEXT and bool(self._text[tok])):
            self.seen[b, tok] = True
        self.policy.advance(r, tok)
