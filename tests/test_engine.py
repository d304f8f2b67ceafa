"""The step-level engine on a tiny random model: rows that join a running batch mid-decode, leave it, are
cancelled, or outlive the cache's first length decode exactly what they decode alone."""
from __future__ import annotations

import pytest
import torch

from aromni.core.decoding import options_for
from aromni.core.engine import Engine, Request
from aromni.core.generate import generate
from aromni.core.model import build_model, get_config
from aromni.core.vocab import compact_layout

V = compact_layout(text=100, image=64, audio=64, image_tokens=8)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_model(get_config("tiny", vocab_size=V.vocab_size, max_seq_len=160), seed=0).eval()


def P(*text, tail=()):
    return [V.bos] + [V.text_start + t for t in text] + list(tail)


CHAT = options_for("chat", max_new_tokens=40, max_speech_tokens=6)  # sampled; images and speech allowed
T2I = options_for("t2i", cfg_text=3.0, cfg_image=1.7)  # CFG: three streams per row


def alone(model, prompts, opts, seeds):
    return generate(model, V, prompts, opts, seeds=seeds).tokens


@torch.no_grad()
def run(model, schedule, steps_max=2000):
    """schedule: {step: [Request, ...]} admitted before that step; returns the engine, stepped until idle."""
    eng = Engine(model)
    for k in range(steps_max):
        if schedule.get(k):
            eng.admit(schedule[k])
        if eng.idle and k > max(schedule):
            return eng
        if not eng.idle:
            eng.step()
    raise AssertionError("did not finish")


def test_rows_joining_mid_decode_equal_alone(model):
    a = Request(model, V, [P(1, 2, 3), P(4, 5, 6, 7, 8, 9, tail=[V.boa])], CHAT, seeds=[1, 2])
    # joins after 3 steps with a prompt longer than the cache's write index: the cache shifts to make room
    b = Request(model, V, [P(*range(10, 40)), P(9)], CHAT, seeds=[3, 4])
    c = Request(model, V, [P(7, 7, tail=[V.eoh, V.boi])], T2I, seeds=[5])  # other options, CFG streams
    d = Request(model, V, [P(2, 2)], options_for("asr", max_new_tokens=12), seeds=[6])
    eng = run(model, {0: [a], 3: [b], 5: [c, d]})
    assert eng.steps > 0 and eng.live_rows == 0 and eng.cache_rows == 0
    for r, seeds in ((a, [1, 2]), (b, [3, 4]), (c, [5]), (d, [6])):
        assert r.finished and r.error is None
        assert r.gen.tokens == alone(model, r.prompts, r.opts, seeds)
    assert len(c.gen.tokens[0]) == V.image_tokens + 1


def test_cancelled_rows_free_their_cache_rows(model):
    opts = CHAT.replace(max_new_tokens=60, images=False)  # one stream per row
    a = Request(model, V, [P(1, 2, 3)], opts, seeds=[1])
    b = Request(model, V, [P(5, 6), P(8)], opts.replace(greedy=True), seeds=[2, 3])
    with torch.no_grad():
        eng = Engine(model)
        eng.admit([a, b])
        for _ in range(3):
            eng.step()
        assert eng.live_rows == 3 and eng.cache_rows == 3
        eng.cancel(b)
        assert eng.live_rows == 1 and eng.cache_rows == 1 and b.finished
        while not eng.idle:
            eng.step()
    assert a.gen.tokens == alone(model, a.prompts, a.opts, [1])


def test_a_callback_error_ends_only_its_own_request(model):
    def boom(b, t):
        raise RuntimeError("client gone")

    a = Request(model, V, [P(1, 2, 3)], CHAT, seeds=[1])
    b = Request(model, V, [P(5, 6)], CHAT, seeds=[2], on_token=boom)
    run(model, {0: [a], 2: [b]})
    assert isinstance(b.error, RuntimeError) and a.error is None
    assert a.gen.tokens == alone(model, a.prompts, a.opts, [1])


def test_a_stream_of_joining_rows_keeps_the_cache_bounded(model):
    """Rows keep joining for longer than the context: the slots no live row attends are dropped."""
    opts = options_for("chat", max_new_tokens=12, images=False, speech=False)
    reqs = {k: [Request(model, V, [P(k % 50, 3, 4)], opts, seeds=[k])] for k in range(0, 400, 6)}
    eng = run(model, reqs)
    assert eng.L < 400 and eng.T <= 2 * model.cfg.max_seq_len
    for k, (r,) in reqs.items():
        assert r.gen.tokens == alone(model, r.prompts, opts, [k]), k


def test_bad_request_fails_alone(model):
    from aromni.core.errors import InputError
    with pytest.raises(InputError):
        Request(model, V, [[V.bos, 10**6]], CHAT)
    with pytest.raises(InputError):
        Request(model, V, [[]], CHAT)


# ----------------------------------------------------------------------------------------------
# the server's decoding thread
# ----------------------------------------------------------------------------------------------
def test_batcher_joins_calls_between_steps_and_drops_cancelled_rows(model):
    """A seeded call that arrives while another decodes joins its batch (one step holds both) and decodes what
    it decodes alone; a call whose client goes away leaves the batch at the next step."""
    import threading
    import time

    from aromni.core.serve.batcher import Batcher, Cancelled

    opts = options_for("chat", max_new_tokens=150, images=False, speech=False, stop=(), controls=())
    long_p, join_p = [P(1, 2, 3)], [P(*range(20, 60)), P(6)]
    want_long, want_join = alone(model, long_p, opts, [1]), alone(model, join_p, opts, [2, 3])
    cancel = threading.Event()
    gate = threading.Event()
    b = Batcher(max_rows=8, cancel_of=lambda: cancel if threading.current_thread().name == "gone" else None)
    out: dict = {}

    def go(name, prompts, seeds, on_token=None):
        try:
            out[name] = b(model, V, prompts, opts, seeds=seeds, on_token=on_token).tokens
        except Cancelled as e:
            out[name] = e

    first = threading.Thread(target=go, args=("long", long_p, [1], lambda r, t: gate.set()))
    first.start()
    gate.wait(30)  # decoding has begun
    threads = [threading.Thread(target=go, args=("join", join_p, [2, 3])),
               threading.Thread(target=go, args=("gone", [P(7, 8)], [4]), name="gone")]
    for t in threads:
        t.start()
    t0 = time.time()
    while b.stats.running_rows < 4 and time.time() - t0 < 30:
        time.sleep(0.001)
    assert b.stats.running_rows == 4  # all three calls' rows decode in one batch
    cancel.set()
    t0 = time.time()
    while b.stats.running_rows > 3 and time.time() - t0 < 30:
        time.sleep(0.001)
    assert b.stats.running_rows <= 3  # the cancelled row left while the others decode
    for t in [first, *threads]:
        t.join(60)
    b.close()
    assert isinstance(out["gone"], Cancelled)
    assert out["long"] == want_long and out["join"] == want_join
    assert b.stats.max_rows == 4 and b.stats.running_rows == 0 and b.cache_rows == 0


def test_static_step_batch_equals_eager_and_admits_only_when_idle(model):
    """The fixed-shape step (the one torch.compile captures) over the whole cache, finished rows idling: the same
    tokens as the eager engine; such an engine takes no rows until its batch ends."""
    prompts = [P(1, 2, 3), P(4, 5, 6, 7, 8, 9, tail=[V.boa]), P(7, 7, tail=[V.eoh, V.boi])]
    for opts in (CHAT, T2I, options_for("asr", max_new_tokens=12)):
        eager = generate(model, V, prompts, opts, seeds=[1, 2, 3], static=False).tokens
        assert generate(model, V, prompts, opts, seeds=[1, 2, 3], static=True).tokens == eager
    eng = Engine(model)
    with torch.no_grad():
        eng.admit([Request(model, V, prompts[:1], CHAT, seeds=[1])], static=True)
        eng.step()
    assert eng.static and not eng.accepts(CHAT)
    assert Engine(model).accepts(CHAT.replace(compile=True))
