"""Two servers on different ports answer the same seeded requests with the same bytes: requests are stateless
(chat history travels in the request), so replicas behind any HTTP load balancer are interchangeable."""
from __future__ import annotations

import itertools

import pytest

from _server import start_server, stop

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def replicas():
    from aromni.core.client import Client

    started = []
    try:
        for _ in range(2):
            started.append(start_server())
        yield [Client(url) for _, url in started]
    finally:
        for p, _ in started:
            stop(p)


def speech(client, text: str, seed: int) -> bytes:
    chunks: list[bytes] = []
    client.tts(text, {}, seed, on_start=lambda sr: None, on_audio=chunks.append)
    return b"".join(chunks)


def test_same_answers_from_either_replica(replicas):
    a, b = replicas
    assert a.host != b.host
    clip = speech(a, "a red circle", 7)
    assert clip and clip == speech(b, "a red circle", 7)
    from aromni.core.wav_stream import wav_header
    wav = wav_header(len(clip) // 2, a.info()["sample_rate"]) + clip
    for c in (a, b):
        assert c.info()["layout"] == a.info()["layout"]
    same = [
        lambda c: c.asr([(wav, "clip.wav")], {}, 3, 20.0),
        lambda c: c.t2i(["a blue square"], 2, {}, 4),
        lambda c: c.caption([(c.t2i(["a green circle"], 1, {}, 5)[0], "x.png")], {"max_new_tokens": 16}, 6),
        lambda c: c.generate(c.info()["layout"], "text", [[0, 5, 6, 7]], {"max_new_tokens": 8}, [11]).tokens,
    ]
    for ask in same:
        assert ask(a) == ask(b)


def test_chat_history_travels_in_the_request(replicas):
    """A conversation whose turns alternate between the replicas (as a round-robin balancer sends them) gets the
    replies it gets from one server."""
    from aromni.core.remote_chat import RemoteChat

    class RoundRobin:
        def __init__(self, clients):
            self.next = itertools.cycle(clients)

        def chat(self, messages, options, seed):
            return next(self.next).chat(messages, options, seed)

    turns = ["hello there", "what is the sky like?", "and the sea?"]
    runs = []
    for client in (replicas[0], RoundRobin(replicas)):
        chat = RemoteChat(client, {"images": False, "speech": False, "max_new_tokens": 24}, seed=9)
        replies = [chat.say(t) for t in turns[:2]]
        chat.reset()
        replies.append(chat.say(turns[2]))
        runs.append([(r.text, r.tokens) for r in replies])
    assert runs[0] == runs[1]
    assert all(toks for _, toks in runs[0])
