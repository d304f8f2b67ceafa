"""Best of N by the model's own inverse task (core/rerank.py) on the tiny random bundle."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aromni.core import rerank, rows, tasks
from aromni.core.api import load
from aromni.core.decoding import check_model_defaults, options_for
from aromni.core.errors import AromniError
from aromni.core.prompts import Example, PromptContext, build_example, tts_prompt
from aromni.core.tokens import speech_codes_of


@pytest.fixture(scope="module")
def omni(tiny_bundle):
    return load(tiny_bundle, device="cpu", dtype="fp32")


def test_response_logprobs_is_the_sum_over_the_response(omni):
    m = omni.model
    ids = [1, 5, 9, 13, 17, 21, 25]
    with torch.no_grad():
        logp = torch.log_softmax(m(torch.tensor([ids])), -1)[0]
    want = sum(float(logp[k - 1, ids[k]]) for k in range(4, 7))  # the last three tokens
    short = Example([1, 5, 9], "caption", 1)
    too_long = Example([1] * (m.cfg.max_seq_len + 1), "caption", 2)
    got = rerank.response_logprobs(m, [Example(ids, "caption", 3), short, too_long], batch_size=2)
    assert got[0] == pytest.approx(want, abs=1e-4)  # right padding beside a shorter row changes nothing
    assert got[1] == pytest.approx(rerank.response_logprobs(m, [short])[0], abs=1e-4)
    assert got[2] == -math.inf


def test_a_floor_raises_each_token_not_the_sum(omni):
    """``floor`` bounds every token's log p (a word no candidate explains costs each the same), not the total."""
    m = omni.model
    ids = [1, 5, 9, 13, 17, 21, 25]
    with torch.no_grad():
        logp = torch.log_softmax(m(torch.tensor([ids])), -1)[0]
    toks = [float(logp[k - 1, ids[k]]) for k in range(4, 7)]
    floor = sorted(toks)[1]  # between the lowest token and the others
    got = rerank.response_logprobs(m, [Example(ids, "caption", 3)], floor=floor)[0]
    assert got == pytest.approx(sum(max(t, floor) for t in toks), abs=1e-4) and got > sum(toks) + 1e-6
    ctx = PromptContext.of(omni)
    codes = [list(range(omni.vocab.image_tokens))]
    ex = build_example(ctx, "caption", text="a red square", image_codes=codes[0])
    assert rerank.caption_scores(omni, ctx, codes, "a red square") == pytest.approx(
        rerank.response_logprobs(m, [ex], floor=rerank.CAPTION_TOKEN_FLOOR), abs=1e-4)


def test_response_logprobs_keeps_to_its_logits_budget(omni, monkeypatch):
    """A large vocabulary scores fewer examples per pass (one at a time here), with the same results."""
    exs = [Example([1] + list(range(5, 5 + k)), "caption", 2) for k in (3, 9, 5, 12)]
    want = rerank.response_logprobs(omni.model, exs, batch_size=4)
    calls = []
    real = omni.model.forward
    monkeypatch.setattr(omni.model, "forward", lambda x, *a, **k: calls.append(x.shape[0]) or real(x, *a, **k))
    monkeypatch.setattr(rerank, "LOGITS_BUDGET", 4 * omni.model.cfg.vocab_size * 12)
    assert rerank.response_logprobs(omni.model, exs, batch_size=4) == pytest.approx(want, abs=1e-4)
    assert calls == [1, 1, 1, 1]


def test_best_and_candidate_options():
    assert rerank.best([-3.0, -1.0, -1.0]) == 1  # first of the ties
    assert rerank.best([-math.inf, -math.inf]) == 0
    t = rerank.candidate_options(options_for("tts"))
    assert (t.greedy, t.markers) == (False, False)
    i = rerank.candidate_options(options_for("t2i", image_greedy=True, cfg=False))
    assert (i.image_greedy, i.cfg) == (False, False)
    seeds = {rerank.candidate_seed(s, j) for s in range(5) for j in range(1, 8)}
    assert len(seeds) == 35 and not seeds & set(range(100))


def test_best_of_keeps_the_highest_scoring_candidate(omni):
    v = omni.vocab
    prompts = [[v.bos] + omni.text.encode("draw it") + [v.boi], [v.bos] + omni.text.encode("again") + [v.boi]]
    opts = options_for("t2i", image_greedy=True, cfg=False, candidates=4, batch_size=3)
    first, _ = rows.decode_rows(omni, prompts, opts, 7)
    seen = []

    def score(i, cands):  # prefer the candidate with the most code-0..9 tokens
        seen.append((i, cands))
        return [float(sum(v.image_code(t) < 10 for t in c if v.is_image(t))) for c in cands]

    best, gens = rerank.best_of(omni, prompts, opts, 7, score)
    assert [i for i, _ in seen] == [0, 1] and all(len(c) == 4 for _, c in seen)
    for (i, cands), row in zip(seen, best):
        assert cands[0] == first[i]  # candidate 0 is the plain decode
        assert len({tuple(c) for c in cands}) > 1  # the others are sampled
        assert row == cands[rerank.best(score(i, cands))]
    one, _ = rerank.best_of(omni, prompts, opts.replace(candidates=1), 7, score)
    assert one == first


def test_scene_votes_count_the_candidates_that_show_the_same_scene(omni):
    """Each image's vote is the log of the share of images whose greedy caption is its own; the image score is
    the floored caption score of the prompt plus that vote."""
    ctx = PromptContext.of(omni)
    n = omni.vocab.image_tokens
    a, b = [3] * n, list(range(n))
    votes = rerank.scene_votes(omni, ctx, [a, a, b])
    assert votes[0] == votes[1] >= math.log(2 / 3) and all(v <= 0 for v in votes)
    shares = [3 * math.exp(v) for v in votes]  # how many of the three say each one's caption
    assert all(abs(s - round(s)) < 1e-9 for s in shares) and round(sum(1 / s for s in shares)) in (1, 2)
    v = omni.vocab
    cands = [[v.boi] + [v.image_id(c) for c in img] + [v.eoi] for img in (a, a, b)] + [[v.eos]]
    got = rerank.image_scorer(omni, ctx, ["a red square"])(0, cands)
    want = [f + x for f, x in zip(rerank.caption_scores(omni, ctx, [a, a, b], "a red square"), votes)]
    assert got[:3] == pytest.approx(want, abs=1e-4) and got[3] == -math.inf


def test_scene_votes_are_log_shares_of_equal_captions(omni, monkeypatch):
    said = ["a red square", "a blue circle", "a red  square ", "a red square"]
    monkeypatch.setattr(rerank, "decode_rows", lambda o, prompts, opts, seed: (
        [omni.text.encode(t) + [omni.vocab.eos] for t in said[: len(prompts)]], []))
    votes = rerank.scene_votes(omni, PromptContext.of(omni), [[0] * omni.vocab.image_tokens] * 4)
    assert votes == pytest.approx([math.log(3 / 4), math.log(1 / 4), math.log(3 / 4), math.log(3 / 4)])


def test_tasks_with_candidates(omni):
    ctx = PromptContext.of(omni)
    imgs = tasks.t2i(omni, ["a red square"], seed=3, opts=options_for("t2i", candidates=3))
    assert len(imgs) == 1 and imgs[0].size == tasks.t2i(omni, ["a red square"], seed=3)[0].size
    assert tasks.t2i(omni, ["a red square"], seed=3, opts=options_for("t2i", candidates=1))[0].tobytes() == \
        tasks.t2i(omni, ["a red square"], seed=3)[0].tobytes()
    r = tasks.tts(omni, "One. Two.", seed=2, opts=options_for("tts", candidates=3, max_new_tokens=40))
    b = tasks.tts_batch(omni, ["One. Two."], seed=2, opts=options_for("tts", candidates=3, max_new_tokens=40))[0]
    assert np.array_equal(r.codes, b.codes)  # streaming and batch pick the same candidates
    # the picked clip is the one the model's own ASR scores highest for the sentence
    opts = options_for("tts", candidates=3, max_new_tokens=40)
    prompt = tts_prompt(ctx, "One.") + [omni.vocab.boa]
    first, _ = rows.decode_rows(omni, [prompt], opts, 2)
    alt, _ = rows.decode_rows(omni, [prompt, prompt], rerank.candidate_options(opts), None,
                              seeds=[rerank.candidate_seed(2, j) for j in (1, 2)])
    clips = [speech_codes_of(c, omni.vocab) for c in first + alt]
    scores = rerank.transcript_scores(omni, ctx, clips, "One.")
    assert scores == pytest.approx([rerank.response_logprobs(omni.model, [build_example(ctx, "asr", text="One.",
                                                                                       audio_codes=c)])[0]
                                    for c in clips], abs=1e-4)
    one = tasks.tts(omni, "One.", seed=2, opts=opts)
    assert one.codes.tolist() == clips[rerank.best(scores)]


def test_a_cfg_scale_turns_guidance_on_over_a_model_default():
    from aromni.core.decoding import with_model_defaults

    table = {"t2i": {"cfg": False, "candidates": 8}}
    assert with_model_defaults(options_for("t2i"), table).cfg is False
    assert with_model_defaults(options_for("t2i", cfg_text=2.0), table).cfg is True
    assert with_model_defaults(options_for("t2i", cfg_text=2.0, cfg=False), table).cfg is False
    assert with_model_defaults(options_for("t2i", candidates=1), table).candidates == 1


def test_candidates_is_checked_and_may_be_a_model_default():
    with pytest.raises(AromniError, match="candidates"):
        options_for("t2i", candidates=0)
    assert check_model_defaults({"t2i": {"candidates": 8, "image_temperature": 0.7}})
    with pytest.raises(AromniError):
        check_model_defaults({"tts": {"candidates": 0}})


def test_candidates_without_output_score_minus_inf():
    assert rerank.spread([True, False, True], [-1.0, -2.0]) == [-1.0, -math.inf, -2.0]
    assert rerank.spread([False, False], []) == [-math.inf, -math.inf]
