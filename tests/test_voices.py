"""Offline English voices (core/corpus/voices.py): each installed engine really speaks; absent ones are skipped."""
from __future__ import annotations

import numpy as np
import pytest

from aromni.core.corpus import voices as V
from aromni.core.errors import AromniError, NotAvailableError

TEXT = "The cat is sleeping in the garden."
SR = 16000
# one voice per engine (kokoro: a female and a male style)
SAMPLES = ("espeak-ng:en-us+m3", "espeak-ng:en-gb-scotland", "flite:slt", "flite:kal", "hibari:heart",
           "kokoro:jf_alpha", "piper:en_US-joe-medium")


def need(engine: str) -> None:
    why = V.missing(engine)
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("vid", SAMPLES)
def test_voice_speaks_a_sentence(vid):
    v = V.Voice.parse(vid)
    need(v.engine)
    wav = V.synthesize(v, TEXT, SR, seed=0)
    assert wav.dtype == np.float32 and wav.ndim == 1
    seconds = wav.size / SR
    assert 0.9 <= seconds <= 4.5, seconds  # seven words at a speaking pace
    assert np.abs(wav).max() <= 1.0 and np.sqrt(np.mean(wav ** 2)) > 0.01  # audible, not clipped past full scale
    # speech, not a tone: energy spread over the band where voices live
    spec = np.abs(np.fft.rfft(wav)) ** 2
    f = np.fft.rfftfreq(wav.size, 1 / SR)
    assert spec[(f > 100) & (f < 4000)].sum() > 0.8 * spec.sum()


@pytest.mark.parametrize("vid", ["espeak-ng:en-us", "flite:awb"])
def test_speed_and_rate(vid):
    v = V.Voice.parse(vid)
    need(v.engine)
    slow = V.synthesize(v, TEXT, 24000, speed=0.8)
    fast = V.synthesize(v, TEXT, 24000, speed=1.25)
    assert fast.size < 0.85 * slow.size
    assert V.synthesize(v, TEXT, 8000).size == pytest.approx(V.synthesize(v, TEXT, 24000).size / 3, rel=0.02)


def test_hibari_is_seeded():
    need("hibari")
    a = V.synthesize("hibari:heart", TEXT, SR, seed=3)
    assert np.array_equal(a, V.synthesize("hibari:heart", TEXT, SR, seed=3))


def test_listing_covers_installed_engines():
    vs = V.list_voices()
    assert len(vs) == len(set(vs))
    for e in V.ENGINES:
        mine = [v for v in vs if v.engine == e]
        assert bool(mine) == (V.missing(e) is None), e
    if V.missing("espeak-ng") is None:
        names = {v.name for v in vs if v.engine == "espeak-ng"}
        assert {"en-us", "en-gb", "en-us+m3", "en-gb-x-rp+f2"} <= names
        assert not any(n.startswith("en-german") for n in names)  # MBROLA voices need mbrola
    if V.missing("flite") is None:
        assert {v.name for v in vs if v.engine == "flite"} == set(V.FLITE_VOICES)


def test_bad_voices_are_refused():
    with pytest.raises(AromniError):
        V.Voice.parse("festival:kal")
    with pytest.raises(AromniError):
        V.Voice.parse("espeak-ng")
    if V.missing("espeak-ng") is None:
        with pytest.raises(AromniError):
            V.synthesize("espeak-ng:xx-nowhere", TEXT, SR)
        with pytest.raises(AromniError):
            V.synthesize("espeak-ng:en-us", "  ", SR)
    if V.missing("flite") is None:
        with pytest.raises(AromniError):
            V.synthesize("flite:nobody", TEXT, SR)
    for e in V.ENGINES:
        if V.missing(e):
            with pytest.raises(NotAvailableError):
                V.synthesize(V.Voice(e, "x"), TEXT, SR)


def test_kokoro_first_use_in_parallel_processes(tmp_path):
    """Processes that first use Kokoro at once (the corpus's workers on a fresh machine) all get the model."""
    need("kokoro")
    import os
    import subprocess
    import sys

    code = ("from aromni.core.corpus import voices as V; "
            "w = V.synthesize('kokoro:jf_alpha', 'one two', 16000); assert w.size > 1000; print('ok')")
    env = os.environ | {"KOKORO_JA_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e.decode()[-500:] for _, e in outs]
    assert sorted(f.name for f in tmp_path.iterdir() if f.suffix == ".onnx") == ["kokoro-v1.0.int8.onnx"]
