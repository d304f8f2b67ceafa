"""Audio levels: frame energies, telling audio without speech (silence, a tone, steady noise, bursts of noise) from
audio that may hold some, and bringing speech to the level a speech codec was trained at."""
from __future__ import annotations

import numpy as np

QUIET_DBFS = -60.0  # a clip whose loud frames (95th percentile) are below this is silence
STEADY_DB = 6.0  # a clip whose loud and quiet frames (95th, 5th percentile) differ by less is a steady sound
NOISE_FLATNESS = 0.52  # loud frames whose spectrum is flatter than this (white noise: about 0.56) are noise
FLAT_BAND_HZ = (100.0, 4000.0)  # where flatness is measured (voiced speech: harmonics and formants)
FRAME_S = 0.02
MAX_GAIN_DB = 40.0  # match_level never raises a clip by more than this


def frame_energy(wav: np.ndarray, frame: int) -> np.ndarray:
    """RMS per frame of ``frame`` samples (the last partial frame included)."""
    n = -(-len(wav) // frame)
    padded = np.zeros(n * frame, dtype=np.float32)
    padded[: len(wav)] = wav
    return np.sqrt((padded.reshape(n, frame) ** 2).mean(axis=1) + 1e-12)


def _frame_db(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """dB full scale of each 20 ms frame of ``wav`` with its DC offset removed."""
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    return 20 * np.log10(frame_energy(wav - wav.mean(), max(1, int(FRAME_S * sample_rate))))


def loud_level(wav: np.ndarray, sample_rate: int) -> float:
    """The level of a clip's loud frames: the 95th percentile of its 20 ms frame levels, dB full scale (DC offset
    removed; -inf for no samples)."""
    if np.asarray(wav).size == 0:
        return -np.inf
    return float(np.percentile(_frame_db(wav, sample_rate), 95))


def loud_flatness(wav: np.ndarray, sample_rate: int, band: tuple[float, float] = FLAT_BAND_HZ,
                  near_db: float = 10.0) -> float:
    """Median spectral flatness (geometric over arithmetic mean of the power spectrum, within ``band``) of the
    loud frames of ``wav``: those within ``near_db`` of its 95th-percentile frame. About 0.56 for white noise,
    below 0.1 for clean speech, whose loud frames are voiced (harmonics under formants); 0.0 for a clip shorter
    than one frame (~32 ms)."""
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    n = 1 << int(np.ceil(np.log2(0.032 * sample_rate)))
    if wav.size < n:
        return 0.0
    frames = np.lib.stride_tricks.sliding_window_view(wav - wav.mean(), n)[:: n // 2]
    f = np.fft.rfftfreq(n, 1 / sample_rate)
    keep = (f >= band[0]) & (f <= min(band[1], 0.45 * sample_rate))
    window = np.hanning(n).astype(np.float32)
    level, flat = [], []
    for a in range(0, len(frames), 2048):  # in blocks: an hour of audio needs no more memory than a minute
        power = np.abs(np.fft.rfft(frames[a:a + 2048] * window, axis=1))[:, keep].astype(np.float64) ** 2 + 1e-20
        mean = power.mean(axis=1)
        level.append(10 * np.log10(mean))
        flat.append(np.exp(np.log(power).mean(axis=1)) / mean)
    db, fl = np.concatenate(level), np.concatenate(flat)
    return float(np.median(fl[db >= np.percentile(db, 95) - near_db]))


def no_speech(wav: np.ndarray, sample_rate: int, quiet_dbfs: float = QUIET_DBFS, steady_db: float = STEADY_DB,
              noise_flatness: float = NOISE_FLATNESS) -> str:
    """Why ``wav`` holds no speech, or "" when it may hold some.

    Speech comes in syllables: its 20 ms frames rise and fall by tens of dB, while a silent clip stays near the
    noise floor and a tone, a hum or steady noise keeps an even level. Its loud frames are voiced, so their
    spectrum has peaks, where noise (steady or in bursts) is flat. So a clip is no speech when its loud frames
    are below ``quiet_dbfs`` (dB full scale), when its loud and quiet frames are less than ``steady_db`` apart,
    or when its loud frames are flatter than ``noise_flatness`` (``loud_flatness``; a DC offset is removed
    first). How often that holds for speech (clean, telephone, under noise) and for other sounds:
    docs/evaluation.md, "No speech"."""
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if wav.size == 0:
        return "no samples"
    db = _frame_db(wav, sample_rate)
    loud, quiet = float(np.percentile(db, 95)), float(np.percentile(db, 5))
    if loud < quiet_dbfs:
        return f"silence (loudest frames {max(loud, -120.0):.0f} dBFS)"
    if loud - quiet < steady_db:
        return f"a steady sound (its level varies by {loud - quiet:.1f} dB)"
    flat = loud_flatness(wav, sample_rate)
    if flat > noise_flatness:
        return f"noise (its loudest frames have a flat spectrum: flatness {flat:.2f})"
    return ""


def match_level(wav: np.ndarray, sample_rate: int, dbfs: float) -> np.ndarray:
    """``wav`` (float32) without its DC offset and scaled so that its loud frames (``loud_level``) sit at ``dbfs``.
    Silence (loud frames below QUIET_DBFS) is only freed of its offset: there is no level to match; no clip is
    raised by more than MAX_GAIN_DB."""
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if wav.size == 0:
        return wav
    wav = wav - wav.mean()
    loud = loud_level(wav, sample_rate)
    if loud < QUIET_DBFS:
        return wav
    gain = min(dbfs - loud, MAX_GAIN_DB)
    return (wav * np.float32(10 ** (gain / 20))).astype(np.float32)


def typical_level(wavs: list[np.ndarray], sample_rate: int) -> float:
    """The median ``loud_level`` of the clips that are not silence, rounded to 0.1 dB (a codec's training level)."""
    levels = [loud_level(w, sample_rate) for w in wavs]
    levels = [x for x in levels if x >= QUIET_DBFS]
    if not levels:
        raise ValueError("no clip louder than silence")
    return round(float(np.median(levels)), 1)
