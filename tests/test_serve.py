"""aromni serve: a real server in a subprocess on a free port (the bundled model), driven with the openai client
and httpx; the commands with and without AROMNI_HOST."""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {"OMP_NUM_THREADS": "1", "AROMNI_MODEL": "", "AROMNI_HOST": "", "AROMNI_API_KEY": ""}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args, port=None):
    port = port or free_port()
    log = open(os.devnull, "wb") if os.environ.get("AROMNI_TEST_QUIET") else subprocess.PIPE
    p = subprocess.Popen([sys.executable, "-m", "aromni", "serve", "--port", str(port), *args],
                         env=dict(os.environ, **ENV), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < 120:
        if p.poll() is not None:
            raise RuntimeError(f"server exited: {p.stderr.read().decode() if p.stderr else ''}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return p, url
        except httpx.HTTPError:
            time.sleep(0.2)
    p.kill()
    raise RuntimeError("server did not start")


def stop(p) -> str:
    p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return (err or b"").decode()


@pytest.fixture(scope="module")
def server():
    p, url = start_server("--max-body-mb", "2", "--max-audio-s", "60")
    yield url
    err = stop(p)
    assert p.returncode == 0, err[-2000:]
    assert "Traceback" not in err, err[-4000:]


@pytest.fixture(scope="module")
def oa(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=300)


def aromni(*args, host=None, input=None):
    env = dict(os.environ, **ENV)
    if host:
        env["AROMNI_HOST"] = host
    return subprocess.run([sys.executable, "-m", "aromni", *args], input=input, capture_output=True, env=env,
                          cwd=ROOT, timeout=300)


def speech(url: str, text: str, seed: int, fmt: str = "pcm", **options) -> bytes:
    r = httpx.post(url + "/v1/audio/speech", json={"input": text, "seed": seed, "response_format": fmt,
                                                   "options": options}, timeout=300)
    assert r.status_code == 200, r.text
    return r.content


@pytest.fixture(scope="module")
def clip(server) -> bytes:
    """A WAV the model said (input for ASR and chat)."""
    return speech(server, "a red circle", 7, "wav")


def png_bytes(color=(200, 30, 30)) -> bytes:
    from PIL import Image, ImageDraw
    im = Image.new("RGB", (64, 64), (20, 20, 160))
    ImageDraw.Draw(im).ellipse((16, 16, 48, 48), fill=color)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# service endpoints
# ----------------------------------------------------------------------------------------------
def test_health_models_metrics(server, oa):
    assert httpx.get(server + "/health").json()["status"] == "ok"
    ids = [m.id for m in oa.models.list().data]
    assert ids == ["default"]
    m = httpx.get(server + "/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    for name in ("aromni_queue_length", "aromni_running_rows", "aromni_tokens_per_second", "aromni_requests_total"):
        assert f"\n{name}" in "\n" + m.text


# ----------------------------------------------------------------------------------------------
# OpenAI endpoints through the openai client
# ----------------------------------------------------------------------------------------------
def test_speech_openai_client(oa):
    r = oa.audio.speech.create(model="default", voice="alloy", input="Hello there.", response_format="wav",
                               extra_body={"seed": 3})
    data = r.read()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) > 44 + 1000
    flac = oa.audio.speech.create(model="default", voice="alloy", input="Hello there.", response_format="flac",
                                  extra_body={"seed": 3}).read()
    import numpy as np
    import soundfile as sf
    a = np.frombuffer(data[44:], dtype="<i2")
    b, _ = sf.read(io.BytesIO(flac), dtype="int16")
    assert (a == b).all()  # the same speech in both formats


def test_speech_streams_before_generation_ends(server):
    text = "One two three. Four five six. Seven eight nine. Ten eleven twelve."
    t0 = time.perf_counter()
    times = []
    with httpx.stream("POST", server + "/v1/audio/speech", json={"input": text, "seed": 1, "response_format": "pcm"},
                      timeout=300) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            if chunk:
                times.append(time.perf_counter() - t0)
    assert len(times) >= 3
    assert times[0] < 0.6 * times[-1], times  # the first audio came long before the last


def test_seeded_request_same_alone_and_batched(server):
    text = "Hello there. How are you?"
    alone = speech(server, text, 11, greedy=False)  # sampled: the seed matters
    out: dict = {}

    def go(seed):
        out[seed] = speech(server, text, seed, greedy=False)

    threads = [threading.Thread(target=go, args=(s,)) for s in (11, 12, 13, 14, 15, 16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[11] == alone
    assert len({out[s] for s in out}) > 1  # other seeds, other speech
    metrics = httpx.get(server + "/metrics").text
    biggest = [line.split()[1] for line in metrics.splitlines() if line.startswith("aromni_batched_rows_max ")]
    assert int(biggest[0]) > 1  # the requests' rows were decoded together


def test_transcription_openai_client(oa, clip):
    r = oa.audio.transcriptions.create(model="default", file=("a.wav", clip), response_format="json",
                                       extra_body={"seed": 0})
    assert isinstance(r.text, str) and r.text.strip()
    txt = oa.audio.transcriptions.create(model="default", file=("a.wav", clip), response_format="text",
                                         extra_body={"seed": 0})
    assert txt.strip() == r.text
    v = oa.audio.transcriptions.create(model="default", file=("a.wav", clip), response_format="verbose_json",
                                       extra_body={"seed": 0})
    assert v.text == r.text and v.duration > 0
    assert v.segments[0].avg_logprob == v.model_extra["aromni"]["answers"][0]["avg_logprob"] < 0
    assert v.segments[0].no_speech_prob == 0.0
    buf = io.BytesIO()
    sf.write(buf, np.zeros(16000, np.float32), 16000, format="WAV")
    quiet = oa.audio.transcriptions.create(model="default", file=("quiet.wav", buf.getvalue()),
                                           response_format="verbose_json")
    assert quiet.text == "" and quiet.segments[0].no_speech_prob == 1.0
    assert quiet.model_extra["aromni"]["answers"][0]["why_no_speech"].startswith("silence")
    with pytest.raises(openai.BadRequestError, match="holds no speech: silence"):  # a chat turn is refused
        oa.chat.completions.create(model="default", messages=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(),
                                                    "format": "wav"}}]}])


def test_images_openai_client(oa):
    from PIL import Image
    r = oa.images.generate(model="default", prompt="a red circle", n=2, response_format="b64_json",
                           extra_body={"seed": 5})
    assert len(r.data) == 2
    ims = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in r.data]
    assert ims[0].size[0] > 8 and ims[0].tobytes() != ims[1].tobytes()


def test_chat_openai_client(oa, clip):
    r = oa.chat.completions.create(model="default", messages=[{"role": "user", "content": "Describe a red circle."}],
                                   seed=1, max_tokens=40)
    msg = r.choices[0].message
    assert r.object == "chat.completion" and isinstance(msg.content, str)
    img = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    r2 = oa.chat.completions.create(model="default", seed=1, max_tokens=40, modalities=["text"], messages=[
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": img}}]}])
    assert isinstance(r2.choices[0].message.content, str)
    r3 = oa.chat.completions.create(model="default", seed=1, max_tokens=40, messages=[
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {
            "data": base64.b64encode(clip).decode(), "format": "wav"}}]}])
    assert r3.choices[0].message.role == "assistant"
    chunks = list(oa.chat.completions.create(model="default", seed=1, max_tokens=40, stream=True, messages=[
        {"role": "user", "content": "Describe a red circle."}]))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert streamed.strip() == msg.content  # same seed, same reply, streamed or not


# ----------------------------------------------------------------------------------------------
# aromni's own endpoints
# ----------------------------------------------------------------------------------------------
def test_generate_endpoint_streams_ids(server):
    seq = [[0, 5, 6, 7], [0, 8, 9]]
    body = {"sequences": seq, "task": "text", "seed": 4, "options": {"max_new_tokens": 8}}
    lines = []
    with httpx.stream("POST", server + "/v1/aromni/generate", json=body, timeout=300) as r:
        assert r.status_code == 200
        lines = [json.loads(x) for x in r.iter_lines() if x]
    done = lines[-1]
    assert done["done"] and len(done["tokens"]) == 2
    for row in (0, 1):
        assert [x["token"] for x in lines if x.get("row") == row and "token" in x] == done["tokens"][row]
    whole = httpx.post(server + "/v1/aromni/generate", json={**body, "stream": False}, timeout=300).json()
    assert whole["tokens"] == done["tokens"]


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def test_rows_join_mid_decode_and_a_disconnected_client_leaves(server):
    """A request that arrives while another decodes joins its batch at once (its first tokens come while the
    other is still decoding); when its client goes away its rows leave at the next step, long before their budget,
    and the request beside them ends with the tokens it gives alone."""
    opts = {"max_new_tokens": 300, "stop": [], "controls": ["ins", "res"], "images": False, "speech": False}
    first = {"sequences": [[0, 5, 6, 7]], "task": "text", "seed": 4, "stream": False, "options": opts}
    alone = httpx.post(server + "/v1/aromni/generate", json=first, timeout=300).json()["tokens"]
    assert len(alone[0]) == 300  # nothing ends these rows but their budget
    got: dict = {}
    a = threading.Thread(target=lambda: got.setdefault("a", httpx.post(
        server + "/v1/aromni/generate", json=first, timeout=300).json()["tokens"]))
    tokens0 = metric(server, "aromni_generated_tokens_total")
    a.start()
    t0 = time.time()
    while metric(server, "aromni_running_rows") < 1 and time.time() - t0 < 30:
        time.sleep(0.01)
    second = {"sequences": [[0, 8, 9], [0, 3, 4]], "task": "text", "seed": 5, "options": opts}
    most = 0
    with httpx.stream("POST", server + "/v1/aromni/generate", json=second, timeout=300) as r:
        assert r.status_code == 200
        n = 0
        for line in r.iter_lines():
            n += bool(line)
            most = max(most, metric(server, "aromni_running_rows"))
            if n >= 6:
                break
        assert a.is_alive()  # the second request's tokens came while the first decodes
    assert most == 3  # one batch: 1 + 2 rows
    while metric(server, "aromni_running_rows") > 1 and time.time() - t0 < 60:
        time.sleep(0.01)
    assert a.is_alive()  # the disconnected rows left while the first request still decodes
    a.join(300)
    assert got["a"] == alone
    generated = metric(server, "aromni_generated_tokens_total") - tokens0 - 300
    assert generated < 300, generated  # the two rows stopped long before their 2 x 300 tokens


# ----------------------------------------------------------------------------------------------
# bad requests: the right 4xx in OpenAI's shape, and the server keeps serving
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path,kw,status", [
    ("/v1/audio/speech", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
    ("/v1/audio/speech", {"json": {"input": 5}}, 400),
    ("/v1/audio/speech", {"json": {"input": "hi", "response_format": "mp3"}}, 400),
    ("/v1/audio/speech", {"json": {"input": "hi", "options": {"temperature": "hot"}}}, 400),
    ("/v1/audio/speech", {"json": {"input": "hi", "options": {"no_such": 1}}}, 400),
    ("/v1/audio/speech", {"json": {"input": "hi", "model": "no-such-model"}}, 404),
    ("/v1/audio/speech", {"json": {"input": "x" * 30000}}, 400),
    ("/v1/audio/speech", {"content": b"{" + b" " * (3 * 1024 * 1024) + b"}",
                          "headers": {"content-type": "application/json"}}, 413),
    ("/v1/images/generations", {"json": {"prompt": "a cat", "n": 99}}, 400),
    ("/v1/images/generations", {"json": {"prompt": "a cat", "response_format": "url"}}, 400),
    ("/v1/audio/transcriptions", {"files": {"file": ("x.wav", b"not audio at all")}}, 400),
    ("/v1/audio/transcriptions", {"data": {"model": "default"}}, 415),
    ("/v1/aromni/caption", {"json": {"images": [base64.b64encode(b"not an image").decode()]}}, 400),
    ("/v1/aromni/caption", {"json": {"images": ["%%%"]}}, 400),
    ("/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"xx").decode()}}]}]}},
     400),
    ("/v1/chat/completions", {"json": {"messages": [{"role": "assistant", "content": "hi"}]}}, 400),
    ("/v1/chat/completions", {"json": {"messages": "hello"}}, 400),
    ("/v1/aromni/generate", {"json": {"sequences": [[0, 99999999]]}}, 400),
    ("/v1/aromni/generate", {"json": {"sequences": [["a"]]}}, 400),
    ("/v1/no/such/path", {"json": {}}, 404),
])
def test_bad_requests(server, path, kw, status):
    r = httpx.post(server + path, timeout=120, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] and "Traceback" not in r.text


def test_serves_after_bad_requests(server):
    assert len(speech(server, "Still here.", 1)) > 1000
    m = httpx.get(server + "/metrics").text
    assert 'status="400"' in m and 'status="413"' in m


def test_key_queue_and_bind_rules():
    r = aromni("serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert r.returncode == 2 and b"API key" in r.stderr and b"Traceback" not in r.stderr
    p, url = start_server("--api-key", "s3cret", "--max-batch", "1", "--max-queue", "0")
    try:
        assert httpx.get(url + "/health").status_code == 200
        r = httpx.get(url + "/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert httpx.get(url + "/v1/models", headers=ok).status_code == 200
        res: list = []

        def go():
            res.append(httpx.post(url + "/v1/audio/speech", headers=ok, timeout=300,
                                  json={"input": "One two three. Four five six.", "response_format": "pcm"}))

        threads = [threading.Thread(target=go) for _ in range(3)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        codes = sorted(x.status_code for x in res)
        assert codes[0] == 200 and 503 in codes
        busy = next(x for x in res if x.status_code == 503)
        assert busy.headers.get("retry-after") and busy.json()["error"]["code"] == "queue_full"
    finally:
        stop(p)


# ----------------------------------------------------------------------------------------------
# commands: the same output with and without AROMNI_HOST
# ----------------------------------------------------------------------------------------------
def test_commands_same_output_remote(server, clip, tmp_path):
    wav = tmp_path / "in.wav"
    wav.write_bytes(clip)
    img = tmp_path / "in.png"
    img.write_bytes(png_bytes())
    cases = [
        (["tts", "--seed", "2", "Good morning to you."], None),
        (["asr", "--seed", "2", str(wav)], None),
        (["asr", "--seed", "2", "--json", str(wav)], None),
        (["caption", "--seed", "2", str(img)], None),
        (["caption", "--seed", "2", "--json", str(img)], None),
        (["t2i", "--seed", "2", "a red circle"], None),
        (["generate", "--seed", "2", "--task", "text", "--max-new-tokens", "12", "-"], b"0 5 6 7\n"),
    ]
    for args, stdin in cases:
        local = aromni(*args, "-q", input=stdin)
        remote = aromni(*args, "-q", input=stdin, host=server)
        assert local.returncode == 0, local.stderr.decode()[-800:]
        assert remote.returncode == 0, remote.stderr.decode()[-800:]
        assert remote.stdout == local.stdout and local.stdout, args
        forced = aromni(*args, "-q", "--local", input=stdin, host="http://127.0.0.1:9")
        assert forced.returncode == 0 and forced.stdout == local.stdout, args


def test_tts_batch_same_files_remote(server, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"text": "One two three."}\n{"text": "A red circle.", "output": "b.wav"}\n')
    outs = {}
    for where, host in (("local", None), ("remote", server)):
        d = tmp_path / where
        r = aromni("tts", "--batch", str(jobs), "--out-dir", str(d), "--seed", "3", "-q", host=host)
        assert r.returncode == 0, r.stderr.decode()[-800:]
        outs[where] = {f: (d / f).read_bytes() for f in sorted(os.listdir(d))}
        assert r.stdout.decode().split() == [str(d / f) for f in ("tts_0000.wav", "b.wav")]
    assert outs["local"] == outs["remote"] and len(outs["local"]) == 2


def test_low_confidence_and_no_speech_remote(server, tmp_path):
    """Low-passed noise in bursts is outside what the bundled model knows, steady noise holds no speech: the notes
    on stderr and the JSON fields are the same through the server."""
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    noise, steady = tmp_path / "noise.wav", tmp_path / "steady.wav"
    low = np.convolve(rng.normal(0, 0.3, t.size), np.ones(4) / 4, "same")  # not flat, so not heard as noise
    sf.write(noise, (low * (np.sin(2 * np.pi * 4 * t) > 0)).astype(np.float32), 16000)
    sf.write(steady, rng.normal(0, 0.3, t.size).astype(np.float32), 16000)
    files = [str(noise), str(steady)]
    for args in (["asr", "--seed", "1", *files], ["asr", "--seed", "1", "--json", *files]):
        local, remote = aromni(*args, "-q"), aromni(*args, "-q", host=server)
        assert local.returncode == remote.returncode == 0, remote.stderr.decode()[-800:]
        assert remote.stdout == local.stdout
        assert remote.stderr == local.stderr
    notes = aromni("asr", "--seed", "1", *files, "-q", host=server).stderr.decode().splitlines()
    assert "low confidence" in notes[0] and "no speech" in notes[1] and len(notes) == 2
    line, quiet = map(json.loads, remote.stdout.decode().splitlines())
    assert line["low_confidence"] is True and line["why_low"] and line["codec_error"] is not None
    assert line["no_speech"] is False and quiet["no_speech"] is True and quiet["text"] == ""


def test_unreachable_server_one_line():
    r = aromni("tts", "hello", host="http://127.0.0.1:9")
    assert r.returncode == 2 and r.stdout == b""
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "cannot reach" in lines[0]
