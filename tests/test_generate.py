"""The decoding loop on a tiny random model: masks, switches without re-prefill, CFG batching, batching, seeds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aromni.core.decoding import IMAGE, Chooser, Policy, options_for
from aromni.core.errors import InputError
from aromni.core.generate import cfg_streams, decode_step, generate, image_stream_token
from aromni.core.model import build_model, get_config
from aromni.core.tokens import split_segments
from aromni.core.vocab import compact_layout

V = compact_layout(text=100, image=64, audio=64, image_tokens=8)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_model(get_config("tiny", vocab_size=V.vocab_size, max_seq_len=160), seed=0).eval()


def P(*text, tail=()):
    return [V.bos] + [V.text_start + t for t in text] + list(tail)


PROMPTS = [P(1, 2, 3, 4, 5, tail=[V.eoh]), P(9, 8, tail=[V.eoh]), P(40, 41, 42, 43, 44, 45, 46, 47, tail=[V.eoh])]


@torch.inference_mode()
def naive_decode(model, prompts, opts, seeds):
    """Reference loop: every step re-runs each stream's whole context from scratch (no cache, no padding)."""
    pol = Policy(V, opts)
    rows = [pol.new_row(p, opts.max_new_tokens) for p in prompts]
    ch = Chooser(V, opts, rows, prompts, seeds, "cpu")
    use_cfg = opts.use_cfg
    while not all(r.done for r in rows):
        lf, li, lu = [], [], []
        for p, r in zip(prompts, rows):
            full = p + r.out
            lf.append(model(torch.tensor([full]))[0, -1])
            if use_cfg:
                i_stream, u_stream = cfg_streams(full, V, opts.compat)
                li.append(model(torch.tensor([i_stream]))[0, -1])
                lu.append(model(torch.tensor([u_stream]))[0, -1] if u_stream else torch.zeros(V.vocab_size))
        ch.choose(torch.stack(lf), (torch.stack(li), torch.stack(lu)) if use_cfg else None)
    return [r.out for r in rows]


def test_masks_hold_in_every_state(model):
    opts = options_for("chat", max_new_tokens=120, max_speech_tokens=6, temperature=2.0, top_p=1.0)
    # prompts that open an image and a speech span, plus free text
    prompts = [P(1, 2, tail=[V.boi]), P(3, tail=[V.boa]), P(5, 6, 7)]
    outs = []
    for seed in range(4):
        g = generate(model, V, prompts, opts, seeds=[seed, seed + 1, seed + 2])
        outs += [p + t for p, t in zip(prompts, g.tokens)]
    saw = set()
    for seq in outs:
        segs = split_segments(seq, V, allow_open_end=True)  # raises on a wrong-modality id inside a span
        for s in segs:
            saw.add(s.kind)
            if s.kind == "image":
                assert len(s.ids) == V.image_tokens
            if s.kind == "audio":
                assert 1 <= len(s.ids) <= 6
        for t in seq:  # image codes only inside image spans (split_segments rejects stray ones too)
            assert t != V.pad
    assert {"image", "audio", "text"} <= saw


def test_switches_without_reprefill_equal_full_reprefill(model):
    """Forced switches TEXT -> IMAGE -> TEXT -> SPEECH (cap) -> TEXT, sampling on, CFG off: same tokens as a
    decoder that re-runs the whole context every step."""
    opts = options_for("chat", max_new_tokens=40, cfg=False, max_speech_tokens=4, max_text_tokens=3,
                       text_cap_then="boi", force_after=(("eoi", "boa"),), top_k=20)
    prompts = [P(1, 2, 3), P(7, tail=[V.boa])]
    g = generate(model, V, prompts, opts, seeds=[5, 6])
    ref = naive_decode(model, prompts, opts, [5, 6])
    assert g.tokens == ref
    kinds = [s.kind for s in split_segments(prompts[0][1:] + g.tokens[0], V, allow_open_end=True)]
    assert "image" in kinds and "audio" in kinds


def test_cfg_batching_equals_separate_streams(model):
    for compat in (False, True):
        opts = options_for("t2i", compat=compat, image_greedy=True, cfg_text=3.0, cfg_image=1.7)
        prompts = [P(1, 2, tail=[V.eoh, V.boi]),
                   [V.bos, V.boi] + [V.image_id(c) for c in range(8)] + [V.eoi] + P(4)[1:] + [V.boi]]
        g = generate(model, V, prompts, opts, seeds=[0, 1])
        assert g.tokens == naive_decode(model, prompts, opts, [0, 1])
        assert all(len(t) == V.image_tokens + 1 and t[-1] == V.eoi for t in g.tokens)


def test_cfg_inside_chat_matches_separate_streams(model):
    """An image opened mid-response (CFG streams running as holes during text) equals the separate-stream CFG."""
    opts = options_for("chat", max_new_tokens=30, max_text_tokens=4, text_cap_then="boi", image_greedy=True,
                       cfg_image=1.5)
    prompts = [P(1, 2, 3), [V.bos, V.boi] + [V.image_id(c) for c in range(8)] + [V.eoi] + P(9)[1:]]
    g = generate(model, V, prompts, opts, seeds=[3, 4])
    assert g.tokens == naive_decode(model, prompts, opts, [3, 4])
    assert V.boi in g.tokens[0]


def test_image_scale_matters_for_text_only_prompts(model):
    prompts = [P(1, 2, tail=[V.eoh, V.boi])]
    out = {g_img: generate(model, V, prompts, options_for("t2i", image_greedy=True, cfg_image=g_img), seeds=[0]).tokens
           for g_img in (1.0, 4.0)}
    assert out[1.0] != out[4.0]
    i, u = cfg_streams(prompts[0], V)
    assert i == [V.bos, V.boi] and u == [V.boi]
    assert cfg_streams(prompts[0], V, compat=True)[1] == [V.bos, V.boi]
    assert image_stream_token(V.eoi, V) and not image_stream_token(V.text_start, V)


def test_batched_equals_one_by_one(model):
    for task in ("chat", "asr"):
        opts = options_for(task, max_new_tokens=25)
        seeds = [11, 12, 13]
        g = generate(model, V, PROMPTS, opts, seeds=seeds)
        single = [generate(model, V, [p], opts, seeds=[s]).tokens[0] for p, s in zip(PROMPTS, seeds)]
        assert g.tokens == single
        assert len({len(t) for t in g.tokens}) > 1 or task == "chat"  # rows finish at different times


def test_seeds_reproduce(model):
    opts = options_for("chat", max_new_tokens=20)
    a = generate(model, V, PROMPTS, opts, seeds=[1, 2, 3]).tokens
    b = generate(model, V, PROMPTS, opts, seeds=[1, 2, 3]).tokens
    c = generate(model, V, PROMPTS, opts, seeds=[4, 5, 6]).tokens
    assert a == b and a != c


def test_greedy_ignores_seed_and_matches_argmax(model):
    opts = options_for("asr", max_new_tokens=10)
    a = generate(model, V, PROMPTS[:1], opts, seeds=[1]).tokens
    assert a == generate(model, V, PROMPTS[:1], opts, seeds=[2]).tokens
    assert a == naive_decode(model, PROMPTS[:1], opts, [9])


def test_decode_step_equals_transformer_forward(model):
    opts = options_for("chat", max_new_tokens=30, max_text_tokens=5, text_cap_then="boi", cfg_image=1.3)
    a = generate(model, V, PROMPTS, opts, seeds=[1, 2, 3])
    b = generate(model, V, PROMPTS, opts, seeds=[1, 2, 3], static=True)  # whole-cache mask, fixed shapes
    assert a.tokens == b.tokens
    # one step compared with Transformer.forward on a cache: no mask, a partial mask, a whole-cache mask
    torch.set_grad_enabled(False)
    try:
        _compare_step(model)
    finally:
        torch.set_grad_enabled(True)


def _compare_step(model):
    tok = torch.tensor([PROMPTS[2], PROMPTS[2]])
    L = tok.shape[1] - 1
    st = model.setup_cache(2, 40)
    model(tok[:, :-1], st)
    ref = model(tok[:, -1:], st)[:, -1]
    for kv_len in (None, L + 1, 40):
        st2 = model.setup_cache(2, 40)
        model(tok[:, :-1], st2)
        kv = None if kv_len is None else torch.arange(kv_len).expand(2, kv_len) <= L
        out = decode_step(model, tok[:, -1:], torch.tensor([[L], [L]]), torch.tensor([L]), kv, L + 1)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_on_token_streams_every_token_in_order(model):
    seen = []
    g = generate(model, V, PROMPTS, options_for("chat", max_new_tokens=15), seeds=[0, 1, 2],
                 on_token=lambda b, t: seen.append((b, t)))
    for b in range(3):
        assert [t for r, t in seen if r == b] == g.tokens[b]


def test_budget_and_errors(model):
    g = generate(model, V, PROMPTS, options_for("chat", max_new_tokens=7), seeds=[0, 1, 2])
    assert all(len(t) <= 7 for t in g.tokens) and g.new_tokens == sum(map(len, g.tokens))
    with pytest.raises(InputError):
        generate(model, V, [[V.bos] * 200], options_for("chat"))
    with pytest.raises(InputError):
        generate(model, V, [[V.vocab_size + 5]], options_for("chat"))
    with pytest.raises(InputError):  # an image that cannot fit
        generate(model, V, [P(1, tail=[V.boi])], options_for("t2i", max_new_tokens=3))
    # compat ASR: the cap counts the prompt: a long prompt leaves no room at all
    g = generate(model, V, [P(*range(30))], options_for("asr", compat=True, max_total_tokens=20))
    assert g.tokens == [[]]


def test_image_row_state_at_start(model):
    codes = [V.image_id(c) for c in range(3)]
    g = generate(model, V, [P(1, tail=[V.boi] + codes)], options_for("t2i"), seeds=[0])
    assert len(g.tokens[0]) == V.image_tokens - 3 + 1 and g.tokens[0][-1] == V.eoi
    assert Policy(V, options_for("t2i")).new_row(P(1, tail=[V.boi] + codes), 10).mode == IMAGE


# ----------------------------------------------------------------------------------------------
# Task API on the tiny bundle (in process)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def omni(tiny_bundle):
    from aromni.core.api import load
    return load(tiny_bundle, device="cpu", dtype="fp32")


def test_tts_audio_streams_while_generating(omni):
    from aromni.core import tasks

    steps = []
    h = omni.model.norm.register_forward_hook(lambda *a: steps.append(1))  # one call per model step
    at_first_audio = []
    try:
        r = tasks.tts(omni, "A single sentence to speak.", on_audio=lambda c: at_first_audio.append(len(steps)),
                      seed=0)
    finally:
        h.remove()
    assert len(r.codes) > 30 and len(r.wav) == len(r.codes) * omni.speech.hop
    assert at_first_audio and at_first_audio[0] < len(steps) - 5  # audio came out long before decoding ended
    assert r.stats["first_audio_s"] < r.stats["wall_s"] and r.stats["rtf"] > 0 and r.stats["tokens_per_s"] > 0
    again = tasks.tts(omni, "A single sentence to speak.", seed=0)
    assert np.array_equal(again.codes, r.codes) and np.allclose(again.wav, r.wav)


def test_tts_splits_sentences(omni):
    from aromni.core import tasks

    r = tasks.tts(omni, "One. Two is here. Three is here too!", seed=1)
    assert r.stats["sentences"] == 2  # "One." is merged with its neighbour
    b = tasks.tts_batch(omni, ["One. Two is here. Three is here too!"], seed=1)[0]
    assert np.array_equal(b.codes, r.codes)  # batched rows, same seeds, same speech


def test_tts_lead_in_and_speech_pad(omni):
    """``lead_in`` puts that much silence before the speech (released with the first speech, so the first-audio
    time is not faked); ``speech_pad`` decodes every span between silence codes, as ``decode(pad=...)``: the same
    codes, other edges, the same length. Streaming and batched TTS agree."""
    from aromni.core import tasks
    from aromni.core.decoding import options_for

    text = "A single sentence to speak."
    base = tasks.tts(omni, text, seed=0)
    opts = options_for("tts", lead_in=0.05, speech_pad=4)
    chunks = []
    r = tasks.tts(omni, text, opts, seed=0, on_audio=chunks.append)
    lead = int(0.05 * omni.speech.sample_rate)
    assert np.array_equal(r.codes, base.codes) and len(r.wav) == lead + len(base.wav)
    assert not r.wav[:lead].any() and len(chunks[0]) > lead and chunks[0][lead:].any()
    padded = omni.speech.decode(r.codes, pad=4)
    assert not np.allclose(r.wav[lead:lead + 4 * omni.speech.hop], base.wav[:4 * omni.speech.hop])
    b = tasks.tts_batch(omni, [text], opts, seed=0)[0]
    assert np.array_equal(b.codes, r.codes) and len(b.wav) == len(r.wav)
    np.testing.assert_array_equal(b.wav[lead:], padded)
    assert not b.wav[:lead].any()


def test_tts_chunk_words_speaks_pieces(omni):
    from aromni.core import tasks
    from aromni.core.decoding import options_for
    from aromni.core.segmenting import split_words

    assert split_words("a small green star on the right", 3) == ["a small green", "star on", "the right"]
    assert split_words("on the right", 3) == ["on the right"] and split_words("a b c d", 3) == ["a b", "c d"]
    assert split_words("  a  b ", 0) == ["a b"] and split_words(" ", 3) == []
    assert tasks.speech_pieces("Hello there my friend. See you on monday!", 2) == [
        "Hello there", "my friend.", "See you", "on monday!"]
    text = "a small green star on the right"
    r = tasks.tts(omni, text, options_for("tts", chunk_words=3), seed=2)
    assert r.stats["sentences"] == 3
    # each piece is its own decode, seeded as the sentences of a text are
    alone = [tasks.tts(omni, p, options_for("tts", chunk_words=3), seed=2 + i)
             for i, p in enumerate(split_words(text, 3))]
    assert np.array_equal(r.codes, np.concatenate([a.codes for a in alone]))
    b = tasks.tts_batch(omni, [text], options_for("tts", chunk_words=3), seed=2)[0]
    assert np.array_equal(b.codes, r.codes)
    # a piece's speech is capped by its length in words (0.5 s + 0.5 s per word), unless the caller sets a cap
    per_s = omni.speech.sample_rate / omni.speech.hop
    assert tasks.piece_options(options_for("tts", chunk_words=3), per_s).max_speech_tokens == int(np.ceil(2 * per_s))
    assert tasks.piece_options(options_for("tts"), per_s).max_speech_tokens == options_for("tts").max_speech_tokens
    mine = options_for("tts", chunk_words=3, max_speech_tokens=500)
    assert tasks.piece_options(mine, per_s).max_speech_tokens == 500
    assert all(0 < len(a.codes) <= np.ceil(2 * per_s) for a in alone)
    # the piece lengths are a decode option a model's bundle may set (a corpus with another speaking rate)
    from aromni.core.decoding import check_model_defaults, with_model_defaults
    from aromni.core.errors import AromniError
    table = check_model_defaults({"tts": {"chunk_words": 3, "piece_seconds": [1.0, 0.25]}})
    own = with_model_defaults(options_for("tts"), table)
    assert tasks.piece_options(own, per_s).max_speech_tokens == int(np.ceil(1.75 * per_s))
    with pytest.raises(AromniError, match="piece_seconds"):
        check_model_defaults({"tts": {"piece_seconds": [0.5, float("nan")]}})


def test_asr_windows_batch_and_determinism(omni):
    from aromni.core import tasks
    from aromni.core.decoding import options_for
    from aromni.core.levels import no_speech

    sr = omni.speech.sample_rate
    rng = np.random.default_rng(0)
    t = np.arange(sr * 14) / sr
    syllables = np.clip(np.sin(2 * np.pi * 4.1 * t), 0, None) ** 2  # a buzz that comes and goes, like speech
    long = (0.2 * syllables * np.sin(2 * np.pi * 140 * t) * (1 + 0.5 * rng.standard_normal(t.size))).astype(np.float32)
    long[sr * 4: sr * 4 + sr // 2] = 0  # a pause to cut at
    wins = tasks.asr_windows(omni, long, options_for("asr"))
    assert len(wins) >= 3 and 0.9 * len(long) < sum(len(w) for w in wins) <= len(long)  # the pause's middle left out
    short = long[: sr]
    assert not any(no_speech(w, sr) for w in wins)  # every window is transcribed
    both = tasks.asr(omni, [long, short], seed=0)
    assert both[1] == tasks.asr(omni, [short], seed=0)[0]
    assert all(isinstance(t, str) for t in both)
    with pytest.raises(InputError):
        tasks.asr(omni, [np.zeros(0, dtype=np.float32)])


def test_caption_t2i_s2i(omni):
    from PIL import Image

    from aromni.core import tasks

    imgs = tasks.t2i(omni, ["a red square"], n=2, seed=5)
    assert len(imgs) == 2 and imgs[0].size == (omni.image.resolution,) * 2
    twice = tasks.t2i(omni, ["a red square", "a red square"], n=1, seed=5)
    assert [np.asarray(i).tolist() for i in twice] == [np.asarray(i).tolist() for i in imgs]  # row i: seed 5 + i
    caps = tasks.caption(omni, imgs, seed=0)
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
    assert tasks.caption(omni, [imgs[1]], seed=0) == caps[1:]  # greedy, batch-invariant
    t = np.arange(omni.speech.sample_rate) / omni.speech.sample_rate
    wav = (0.1 * np.clip(np.sin(2 * np.pi * 4.1 * t), 0, None) * np.sin(2 * np.pi * 140 * t)).astype(np.float32)
    (text, img), = tasks.s2i(omni, [wav], seed=0)
    assert isinstance(text, str) and isinstance(img, Image.Image)
    with pytest.raises(InputError, match="clip 2 holds no speech: silence"):
        tasks.s2i(omni, [wav, np.zeros_like(wav)], seed=0)


def test_t2i_long_prompt_is_cut_to_fit(omni):
    from aromni.core import tasks

    imgs = tasks.t2i(omni, ["word " * 400], seed=0)
    assert len(imgs) == 1


def test_chat_session_history_and_batch(omni):
    from aromni.core import chat, tasks
    from aromni.core.decoding import options_for

    opts = options_for("chat", max_new_tokens=30)
    a = chat.ChatSession(omni, opts, seed=3)
    r1 = a.say("hello")
    assert a.history[-len(r1.tokens):] == r1.tokens and len(a.turn_ends) == 1
    r2 = a.say("more", images=[tasks.t2i(omni, ["x"], seed=0)[0]])
    assert isinstance(r2.text, str)
    # the same two conversations decoded as one batch give the same replies
    s1, s2 = chat.ChatSession(omni, opts, seed=3), chat.ChatSession(omni, opts, seed=9)
    batch = chat.chat_step([s1, s2], [{"text": "hello"}, {"text": "bye"}])
    assert batch[0].tokens == r1.tokens
    assert batch[1].tokens == chat.ChatSession(omni, opts, seed=9).say("bye").tokens
    # a long conversation drops its oldest turns instead of overflowing the context
    for _ in range(12):
        r = a.say("tell me more about it please " * 3)
    assert len(a.history) < omni.model.cfg.max_seq_len and r.trimmed >= 0 and len(a.turn_ends) < 14
    a.reset()
    assert a.history == []


def test_compile_uses_the_static_step_only_where_it_measured_faster():
    from aromni.core.generate import static_step

    on = options_for("text", compile=True)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert static_step(on, cpu, 1) and not static_step(on, cpu, 2) and not static_step(on, cpu, 8)
    assert static_step(on, cuda, 8)  # CUDA graphs
    assert not static_step(options_for("text"), cpu, 1)
