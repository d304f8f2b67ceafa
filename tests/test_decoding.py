"""Decoding policy: masks per state, logit processors (against transformers' as oracle), the state machine."""
from __future__ import annotations

import pytest
import torch

from aromni.core.decoding import (IMAGE, M_IMAGE, M_SPEECH, M_TEXT, M_TEXT_NO_BOI, SPEECH, TEXT, Chooser,
                                  DecodeOptions, Policy, apply_repetition_penalty, apply_top_k, apply_top_p,
                                  build_masks, cfg_mix, initial_mode, options_for)
from aromni.core.errors import AromniError
from aromni.core.vocab import arom_layout, compact_layout

V = compact_layout(text=100, image=64, audio=64, image_tokens=8)


def ids(r):
    return set(range(r.start, r.stop))


def allowed(row):
    return set(torch.nonzero(row).flatten().tolist())


# --- masks ---------------------------------------------------------------------------------------
def test_text_mask_has_no_image_or_audio_codes():
    m = build_masks(V, options_for("chat"))
    text = allowed(m[M_TEXT])
    assert not text & ids(V.image_range)
    assert not text & ids(V.audio_range)
    assert ids(V.text_range) <= text
    assert {V.eos, V.eom, V.boi, V.boa, V.ins, V.res} <= text
    assert not {V.bos, V.pad, V.eoi, V.eoa} & text
    assert V.boi not in allowed(m[M_TEXT_NO_BOI])


def test_boi_and_boa_only_when_enabled():
    m = build_masks(V, options_for("asr"))
    text = allowed(m[M_TEXT])
    assert V.boi not in text and V.boa not in text
    assert text == ids(V.text_range) | {V.eos, V.eom}
    m = build_masks(V, options_for("tts"))
    assert V.boa in allowed(m[M_TEXT]) and V.boi not in allowed(m[M_TEXT])


def test_image_and_speech_masks():
    m = build_masks(V, options_for("chat"))
    assert allowed(m[M_IMAGE]) == ids(V.image_range)
    assert allowed(m[M_SPEECH]) == ids(V.audio_range) | {V.eoa}


def test_compat_text_mask_bans_only_image_codes():
    m = build_masks(V, options_for("asr", compat=True))
    assert allowed(m[M_TEXT]) == set(range(V.vocab_size)) - ids(V.image_range)
    assert allowed(m[M_SPEECH]) == allowed(m[M_TEXT])  # no audio-only mask in the reference


def test_arom_layout_masks_exclude_reserved_ids():
    v = arom_layout()
    m = build_masks(v, options_for("chat"))
    text = allowed(m[M_TEXT])
    assert 8710 not in text and 12830 not in text  # reserved slots and <eoh>
    assert 16384 in text and 65535 in text


# --- processors against transformers' -------------------------------------------------------------
def test_processors_match_transformers():
    from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                         TopKLogitsWarper, TopPLogitsWarper)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g) * 3
    ctx = torch.randint(0, 50, (3, 12), generator=g)
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter(1, ctx, True)
    ours = apply_repetition_penalty(logits, seen, torch.full((3,), 1.2))
    theirs = RepetitionPenaltyLogitsProcessor(1.2)(ctx, logits.clone())
    torch.testing.assert_close(ours, theirs)
    x = TemperatureLogitsWarper(1.3)(ctx, theirs.clone())
    torch.testing.assert_close(apply_top_p(x, torch.full((3,), 0.9)), TopPLogitsWarper(0.9)(ctx, x.clone()))
    torch.testing.assert_close(apply_top_k(x, torch.full((3,), 7)), TopKLogitsWarper(7)(ctx, x.clone()))


def test_per_row_parameters():
    x = torch.randn(2, 30)
    out = apply_top_k(x, torch.tensor([0, 3]))
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[1]).sum() == 3
    out = apply_top_p(x, torch.tensor([1.0, 1e-6]))
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[1]).sum() == 1
    same = apply_repetition_penalty(x, torch.ones(2, 30, dtype=torch.bool), torch.tensor([1.0, 2.0]))
    assert torch.equal(same[0], x[0]) and not torch.equal(same[1], x[1])


def test_cfg_mix_formula():
    f, i, u = torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([1.0])
    assert cfg_mix(f, i, u, 3.0, 1.5).item() == pytest.approx(1 + 1.5 * 1 + 3 * 1)
    assert cfg_mix(f, i, u, 1.0, 1.0).item() == pytest.approx(3.0)  # scales of 1: the full stream


# --- the state machine -----------------------------------------------------------------------------
def test_initial_mode_from_prompt_tail():
    assert initial_mode([V.bos, 20, V.boi], V) == (IMAGE, 0)
    assert initial_mode([V.bos, V.boi, V.image_id(3), V.image_id(4)], V) == (IMAGE, 2)
    assert initial_mode([V.bos, 20, V.boa, V.audio_id(1)], V) == (SPEECH, 1)
    assert initial_mode([V.bos, V.boa, V.audio_id(1), V.eoa], V) == (TEXT, 0)
    assert initial_mode([V.bos, 20], V) == (TEXT, 0)


def test_image_span_is_exactly_n_codes_then_forced_eoi():
    p = Policy(V, options_for("chat"))
    r = p.new_row([V.bos, V.boi], budget=100)
    for c in range(V.image_tokens):
        assert not r.forced
        p.advance(r, V.image_id(c))
    assert r.forced == [V.eoi]
    p.advance(r, r.forced.pop(0))
    assert r.mode == TEXT and not r.done


def test_end_after_image():
    p = Policy(V, options_for("t2i"))
    r = p.new_row([V.bos, V.boi], budget=100)
    for c in range(V.image_tokens):
        p.advance(r, V.image_id(c))
    p.advance(r, r.forced.pop(0))
    assert r.done and r.finish == "image"


def test_speech_cap_forces_eoa():
    p = Policy(V, options_for("tts", max_speech_tokens=5))
    r = p.new_row([V.bos, V.boa], budget=100)
    for c in range(5):
        p.advance(r, V.audio_id(c))
    assert r.forced == [V.eoa]
    p.advance(r, r.forced.pop(0))
    assert r.done and r.finish == "speech"


def test_budget_keeps_room_for_eoa():
    p = Policy(V, options_for("tts"))
    r = p.new_row([V.bos, V.boa], budget=4)
    for c in range(3):
        p.advance(r, V.audio_id(c))
    assert r.forced == [V.eoa]


def test_boi_cutoff_when_image_does_not_fit():
    p = Policy(V, options_for("chat"))
    assert p.mask_index(p.new_row([V.bos], budget=V.image_tokens + 2)) == M_TEXT
    assert p.mask_index(p.new_row([V.bos], budget=V.image_tokens + 1)) == M_TEXT_NO_BOI
    pc = Policy(V, options_for("chat", compat=True))  # reference: length >= max_seq_len - (N + 2) bans BOI
    assert pc.mask_index(pc.new_row([V.bos], budget=V.image_tokens + 3)) == M_TEXT
    assert pc.mask_index(pc.new_row([V.bos], budget=V.image_tokens + 2)) == M_TEXT_NO_BOI


def test_stop_tokens_end_the_row():
    p = Policy(V, options_for("chat"))
    r = p.new_row([V.bos], budget=10)
    p.advance(r, 20)
    p.advance(r, V.eom)
    assert r.done and r.finish == "stop" and r.out == [20, V.eom]


def test_s2i_forces_res_then_boi():
    p = Policy(V, options_for("s2i", max_text_tokens=3))
    r = p.new_row([V.bos, V.ins], budget=100)
    for t in (20, 21, 22):
        p.advance(r, t)
    assert r.forced == [V.res]
    p.advance(r, r.forced.pop(0))
    assert r.forced == [V.boi]
    p.advance(r, r.forced.pop(0))
    assert r.mode == IMAGE


def test_selector_switches_on_markers():
    """Greedy after <-Ins->/<boa>, sampling after <-Res->/<eoa>; the marker itself is chosen in the old mode."""
    p = Policy(V, options_for("chat"))
    r = p.new_row([V.bos, 20], budget=100)
    p.update_selector(r)
    assert r.greedy is False
    for tok, expect in ((V.ins, True), (30, True), (V.res, False), (31, False), (V.boa, True),
                        (V.audio_id(1), True), (V.eoa, False)):
        p.advance(r, tok)
        p.update_selector(r)
        assert r.greedy is expect, tok
    p2 = Policy(V, options_for("chat", markers=False))
    r = p2.new_row([V.bos, V.ins], budget=10)
    p2.update_selector(r)
    assert r.greedy is False


def test_chooser_greedy_vs_sampling_by_marker():
    """With a flat-ish distribution, rows after <-Ins-> always pick the argmax; rows after <-Res-> do not."""
    opts = options_for("chat", repetition_penalty=1.0, top_p=1.0, temperature=1.0)
    logits = torch.zeros(2, V.vocab_size)
    logits[:, V.text_start: V.text_end] = torch.linspace(0, 1, V.text_end - V.text_start)
    picks = {V.ins: set(), V.res: set()}
    for seed in range(20):
        p = Policy(V, opts)
        rows = [p.new_row([V.bos, V.ins], 50), p.new_row([V.bos, V.res], 50)]
        ch = Chooser(V, opts, rows, [[V.bos, V.ins], [V.bos, V.res]], [seed, seed], "cpu")
        a, b = ch.choose(logits.clone())
        picks[V.ins].add(a)
        picks[V.res].add(b)
    assert picks[V.ins] == {V.text_end - 1}
    assert len(picks[V.res]) > 5


def test_options_defaults_and_validation():
    assert options_for("asr").greedy and not options_for("chat").greedy
    assert options_for("t2i").end_after == "image" and options_for("tts").end_after == "speech"
    c = options_for("asr", compat=True)
    assert c.compat and c.penalty_scope == "context" and c.max_total_tokens == 1024 and c.repetition_penalty == 1.2
    assert options_for("chat", temperature=None).temperature == DecodeOptions().temperature
    with pytest.raises(AromniError):
        options_for("nope")
    with pytest.raises(AromniError):
        options_for("chat", top_p=0)
    with pytest.raises(AromniError):
        options_for("chat", max_new_tokens=0)


def test_head_span_covers_exactly_what_rows_may_pick():
    v = arom_layout()
    opts = options_for("chat")
    p = Policy(v, opts)
    img, sp, txt = p.new_row([0, v.boi], 2000), p.new_row([0, v.boa], 2000), p.new_row([0, 16400], 2000)
    span = lambda rows: Chooser(v, opts, rows, [[0]] * len(rows), [0] * len(rows), "cpu").span()  # noqa: E731
    assert span([img]) == (v.image_offset, v.image_offset + v.image_codes)
    assert span([sp]) == (v.audio_offset, v.eoa + 1)  # 4096 codes and <eoa>: 1/16 of the LM head
    assert span([img, sp]) == (v.image_offset, v.eoa + 1)
    assert span([txt]) is None  # text: (almost) the whole head


def test_model_defaults_fill_only_what_the_caller_left_open():
    from aromni.core.decoding import options_for, with_model_defaults

    table = {"t2i": {"image_greedy": True, "cfg_text": 2.0}, "asr": {"temperature": 0.7}}
    opts = with_model_defaults(options_for("t2i"), table)
    assert opts.image_greedy and opts.cfg_text == 2.0
    mine = with_model_defaults(options_for("t2i", image_greedy=False), table)
    assert not mine.image_greedy and mine.cfg_text == 2.0  # an explicit choice wins
    assert with_model_defaults(options_for("t2i", compat=True), table) == options_for("t2i", compat=True)
    assert with_model_defaults(options_for("tts"), table) == options_for("tts")  # no entry for the task
    later = options_for("t2i").replace(cfg_text=5.0)  # code that sets an option is explicit too
    assert with_model_defaults(later, table).cfg_text == 5.0


def test_model_defaults_are_validated():
    from aromni.core.decoding import check_model_defaults

    assert check_model_defaults({"s2i": {"image_greedy": True}}) == {"s2i": {"image_greedy": True}}
    assert check_model_defaults({"tts": {"chunk_words": 3}}) == {"tts": {"chunk_words": 3}}
    for bad in ({"draw": {"image_greedy": True}}, {"t2i": {"batch_size": 4}}, {"t2i": {"image_temperature": 0}},
                {"t2i": True}, [], {"tts": {"chunk_words": -1}}):
        with pytest.raises(AromniError):
            check_model_defaults(bad)


def test_batched_sampling_draws_what_per_row_multinomial_draws():
    """One batched pick per step gives each row exactly its own generator's multinomial draw, whatever the batch."""
    from aromni.core.decoding import make_generators, sample_rows

    probs = torch.softmax(3 * torch.randn(4, 300, generator=torch.Generator().manual_seed(0)), -1)
    probs[1, :250] = 0  # a masked row
    probs[1] /= probs[1].sum()
    seeds = [11, 12, 13, 14]
    ref_gens = make_generators(seeds, "cpu")
    gens = make_generators(seeds, "cpu")
    for _ in range(5):
        want = [int(torch.multinomial(probs[b], 1, generator=ref_gens[b])[0]) for b in range(4)]
        assert sample_rows(probs, gens).tolist() == want
    alone = make_generators([13], "cpu")
    together = make_generators([11, 13], "cpu")
    for _ in range(5):
        assert sample_rows(probs[2:3], alone).item() == sample_rows(probs[[0, 2]], together)[1].item()
    assert int(sample_rows(probs[1:2], make_generators([0], "cpu"))) >= 250
