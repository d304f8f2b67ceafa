"""Speech tokenizer: WavTokenizer (one codebook, 40 codes/s), native bundle I/O and the original checkpoints."""
from __future__ import annotations

import os

import numpy as np
import torch

from .bundle import register_tokenizer
from .errors import CheckpointError, InputError
from .levels import match_level
from .resample import RESAMPLERS
from .speech_stream import StreamConfig, StreamDecoder
from .wavtokenizer import CONFIGS, WavTokenizerConfig, WavTokenizerNet, from_upstream

TYPE = "wavtokenizer"
FILE = "speech_tokenizer.safetensors"


def _finite(wav) -> np.ndarray:
    """``wav`` as float32, refused (InputError) when a sample is NaN or infinite."""
    x = np.asarray(wav, dtype=np.float32)
    if not np.isfinite(x).all():
        raise InputError("audio contains NaN or infinite samples")
    return x


class WavTokenizer:
    """mono float32 wav at ``sample_rate`` <-> codes (int64, one per ``hop`` samples). Always fp32 (the
    exp() of the log-magnitude and the window-envelope division are precision-sensitive).

    ``resampler`` names how audio at other rates is brought to ``sample_rate`` before encoding ("soxr", or "sinc":
    torchaudio's Resample, as the reference front end): codes follow the resampler the codec's users were
    trained with, so original WavTokenizer checkpoints use "sinc" and the project's own codecs "soxr".

    ``input_dbfs`` (the project's codecs: the typical level of their training clips, ``levels.typical_level``)
    brings every clip to that level before it is encoded (``levels.match_level``): a codec that heard speech at
    one level only maps quieter or louder speech to other codes. None (original checkpoints) encodes clips as
    they are."""

    def __init__(self, net: WavTokenizerNet, preset: str | None = None, resampler: str = "soxr",
                 input_dbfs: float | None = None):
        if resampler not in RESAMPLERS:
            raise CheckpointError(f"unknown speech resampler {resampler!r} ({', '.join(RESAMPLERS)})")
        self.resampler = resampler
        self.input_dbfs = input_dbfs
        self.net = net.eval()
        self.cfg: WavTokenizerConfig = net.cfg
        self.preset = preset
        self.sample_rate = self.cfg.sample_rate
        self.hop = self.cfg.hop
        self.codebook_size = self.cfg.codebook_size
        self._silence_code: int | None = None

    @property
    def device(self) -> torch.device:
        return self.net.quantizer.embed.device

    def to(self, device) -> "WavTokenizer":
        self.net.to(device)
        return self

    # --- encode ---------------------------------------------------------------------------------
    def leveled(self, wav: np.ndarray) -> np.ndarray:
        """``wav`` (float32) as the encoder gets it: at ``input_dbfs`` when the codec names one, else as it is."""
        x = _finite(wav)
        return x if self.input_dbfs is None else match_level(x, self.sample_rate, self.input_dbfs)

    def encode(self, wav: np.ndarray) -> torch.Tensor:
        """wav [T] -> codes [ceil(T / hop)] (int64, on CPU)."""
        return self.encode_batch(np.asarray(wav, dtype=np.float32)[None])[0]

    def encode_batch(self, wavs: np.ndarray) -> torch.Tensor:
        """Equal-length clips [B, T] -> codes [B, ceil(T / hop)].

        Clips of different lengths must be encoded one by one: padding them to a common length changes the
        last ~4 codes of the shorter ones (the encoder looks ~4 frames ahead and reflect-pads the real end).
        """
        wavs = _finite(wavs)
        if wavs.ndim != 2:
            raise ValueError(f"encode_batch expects [B, T], got shape {wavs.shape}")
        if self.input_dbfs is not None and wavs.shape[1]:
            wavs = np.stack([self.leveled(w) for w in wavs])
        n = -(-wavs.shape[1] // self.hop)
        if n == 0:
            return torch.zeros(wavs.shape[0], 0, dtype=torch.long)
        with torch.inference_mode():
            codes = self.net.encode(torch.from_numpy(wavs).to(self.device))
        assert codes.shape[1] == n
        return codes.cpu()

    # --- decode ---------------------------------------------------------------------------------
    def _codes(self, codes) -> torch.Tensor:
        c = torch.as_tensor(np.asarray(codes) if not torch.is_tensor(codes) else codes).long().reshape(-1)
        if c.numel() and (c.min() < 0 or c.max() >= self.codebook_size):
            bad = int(c[(c < 0) | (c >= self.codebook_size)][0])
            raise InputError(f"speech code {bad} is outside the codebook (0..{self.codebook_size - 1})")
        return c

    def decode(self, codes, length: int | None = None, pad: int = 0) -> np.ndarray:
        """codes [L] -> wav [L * hop] (float32), cut to ``length`` samples when the caller knows it. ``pad`` > 0
        decodes ``pad`` frames of ``silence_code`` before and after as context and cuts them off: the decoder
        blurs a clip's edges (a TTS span's first sound, often a short "a", is lost without it)."""
        c = self._codes(codes)
        if c.numel() == 0:
            return np.zeros(0, dtype=np.float32)
        if pad > 0:
            s = self.silence_codes(pad)
            wav = self.decode_batch(torch.cat([s, c, s])[None])[0][pad * self.hop: (pad + len(c)) * self.hop]
        else:
            wav = self.decode_batch(c[None])[0]
        return wav[:length] if length is not None else wav

    def autoencode(self, wav: np.ndarray) -> np.ndarray:
        """wav [T] -> the decoder's output for the encoder's latents, not quantised ([ceil(T / hop) * hop]). Set
        beside ``decode(encode(wav))`` it tells what the codebook loses from what encoder and decoder lose."""
        x = self.leveled(np.asarray(wav, dtype=np.float32).reshape(-1))
        if x.size == 0:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            y = self.net.decode_features(self.net.encode_latents(torch.from_numpy(x)[None].to(self.device)))
        return y[0].float().cpu().numpy()

    @property
    def silence_code(self) -> int:
        """The code this codec gives silence (the commonest code of 0.5 s of zeros), computed once."""
        if self._silence_code is None:
            codes = self.encode(np.zeros(self.sample_rate // 2, dtype=np.float32)).reshape(-1)
            self._silence_code = int(torch.bincount(codes.long()).argmax())
        return self._silence_code

    def silence_codes(self, n: int) -> torch.Tensor:
        """``n`` frames of ``silence_code`` [n] (int64); computes nothing when ``n`` is 0."""
        return torch.full((n,), self.silence_code if n else 0, dtype=torch.long)

    def decode_batch(self, codes: torch.Tensor) -> np.ndarray:
        """Equal-length code rows [B, L] -> wav [B, L * hop]. Rows are decoded together only because they are
        equal in length: padding would change every sample (GroupNorm and attention span all frames)."""
        with torch.inference_mode():
            wav = self.net.decode(torch.as_tensor(codes).long().to(self.device))
        return wav.float().cpu().numpy()

    def features(self, codes) -> torch.Tensor:
        """codes [L] -> codebook vectors [L, dim]."""
        return self.net.quantizer.embed[self._codes(codes).to(self.device)]

    # --- streaming ------------------------------------------------------------------------------
    def stream(self, config: StreamConfig | None = None, pad: int = 0, **overrides) -> StreamDecoder:
        """A chunked decoder: ``push(codes) -> wav ready so far``, ``flush() -> the rest`` (see speech_stream);
        ``pad`` as in ``decode``."""
        return StreamDecoder(self, config, pad=pad, **overrides)

    # --- persistence ----------------------------------------------------------------------------
    def save(self, root: str) -> dict:
        from safetensors.torch import save_file

        os.makedirs(root, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        tmp = os.path.join(root, FILE + ".tmp")
        save_file(state, tmp, metadata={"format": "aromni-wavtokenizer"})
        os.replace(tmp, os.path.join(root, FILE))
        spec: dict = {"type": TYPE, "file": FILE, "preset": self.preset, "config": self.cfg.to_dict(),
                      "resampler": self.resampler}
        if self.input_dbfs is not None:
            spec["input_dbfs"] = self.input_dbfs
        return spec


def build_speech_tokenizer(preset: str = "tiny", seed: int = 0, device="cpu") -> WavTokenizer:
    """A randomly initialised tokenizer of a preset shape (``CONFIGS``); codebook marked as not trained."""
    if preset not in CONFIGS:
        raise ValueError(f"unknown speech tokenizer preset {preset!r} ({', '.join(CONFIGS)})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = WavTokenizerNet(CONFIGS[preset])
    return WavTokenizer(net.to(device), preset)


def _load_state(net: WavTokenizerNet, state: dict, source: str) -> None:
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
           if k in state and state[k].shape != v.shape]
    if missing or unexpected or bad:
        parts = [f"{what} {lst[:4]}{' …' if len(lst) > 4 else ''} ({len(lst)})"
                 for what, lst in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("shape mismatches", bad)) if lst]
        raise CheckpointError(f"{source}: does not fit the WavTokenizer config: " + "; ".join(parts))
    # assigned, not copied: a net built on the meta device gets the file's tensors as they are (allocating
    # empty ones first with to_empty pulls in sympy through torch's meta kernels: ~0.3 s per CLI call)
    net.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)


@register_tokenizer("speech", TYPE)
def load_from_spec(spec: dict, root: str, device="cpu") -> WavTokenizer:
    """Bundle loader: a native safetensors file (``file`` + ``config``), or an original ``yaml`` + ``ckpt`` pair.
    ``resampler`` (optional): "soxr" (default for native files, as the project's codecs were trained) or "sinc"
    (default for an original pair). ``input_dbfs`` (optional): the level clips are brought to before encoding."""
    if "ckpt" in spec:
        tok = load_wavtokenizer(os.path.join(root, spec["yaml"]), os.path.join(root, spec["ckpt"]), device)
        return WavTokenizer(tok.net, tok.preset, spec["resampler"]) if "resampler" in spec else tok
    from safetensors.torch import load_file

    path = os.path.join(root, spec.get("file", FILE))
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: speech tokenizer weights are missing")
    cfg = WavTokenizerConfig.from_dict(spec.get("config", {}))
    try:
        state = load_file(path)
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None
    with torch.device("meta"):
        net = WavTokenizerNet(cfg)
    _load_state(net, state, path)
    level = spec.get("input_dbfs")
    if level is not None and not isinstance(level, (int, float)):
        raise CheckpointError(f"{root}: speech tokenizer input_dbfs must be a number, not {level!r}")
    return WavTokenizer(net.to(device), spec.get("preset"), spec.get("resampler", "soxr"),
                        None if level is None else float(level))


# ----------------------------------------------------------------------------------------------
# Original WavTokenizer checkpoints (Lightning .ckpt + yaml)
# ----------------------------------------------------------------------------------------------
def config_from_yaml(yaml_path: str) -> WavTokenizerConfig:
    """Sizes from an upstream training yaml (``model.init_args.{feature_extractor,backbone,head}``)."""
    import yaml

    from . import yamlio

    try:
        with open(yaml_path) as f:
            doc = yamlio.loads(f.read(), f.name)
        args = doc["model"]["init_args"]
        fe, bb, hd = (args[k]["init_args"] for k in ("feature_extractor", "backbone", "head"))
    except OSError as e:
        raise CheckpointError(f"{yaml_path}: {e.strerror or e}") from None
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise CheckpointError(f"{yaml_path}: not a WavTokenizer config (missing {e})") from None
    if int(fe.get("num_quantizers", 1)) != 1:
        raise CheckpointError(f"{yaml_path}: {fe['num_quantizers']} quantizers; only single-codebook models "
                              "(as AR-Omni uses) are supported")
    if hd.get("padding", "same") != "same":
        raise CheckpointError(f"{yaml_path}: ISTFT head padding {hd['padding']!r}; only 'same' is supported")
    if "24khz" not in str(fe.get("encodec_model", "encodec_24khz")):
        raise CheckpointError(f"{yaml_path}: encodec_model {fe['encodec_model']!r}; only the mono 24 kHz encoder "
                              "is supported")
    cfg = WavTokenizerConfig(
        sample_rate=int(args.get("sample_rate", 24000)), ratios=tuple(int(r) for r in fe["dowmsamples"]),
        dim=int(bb["input_channels"]), codebook_size=int(fe["vq_bins"]), backbone_dim=int(bb["dim"]),
        intermediate_dim=int(bb["intermediate_dim"]), num_layers=int(bb["num_layers"]),
        adanorm_embeddings=int(bb.get("adanorm_num_embeddings", 4)), n_fft=int(hd["n_fft"]))
    if int(hd["hop_length"]) != cfg.hop:
        raise CheckpointError(f"{yaml_path}: head hop_length {hd['hop_length']} differs from the encoder's "
                              f"downsampling {cfg.hop}")
    if int(hd["dim"]) != cfg.backbone_dim:
        raise CheckpointError(f"{yaml_path}: head dim {hd['dim']} differs from the backbone dim {cfg.backbone_dim}")
    return cfg


def load_wavtokenizer(yaml_path: str, ckpt_path: str, device="cpu") -> WavTokenizer:
    """An original WavTokenizer: Lightning ``.ckpt`` (loaded weights-only) + its training yaml.

    Keeps the encoder, quantizer, backbone and head; skips the unused SEANet decoder, discriminators,
    loss buffers and optimizer state. Audio at other rates is resampled as the reference front end does
    (torchaudio's windowed sinc, ``resampler="sinc"``).
    """
    cfg = config_from_yaml(yaml_path)
    try:
        try:
            obj = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # files in the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            obj = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt_path}: no such file") from None
    except Exception as e:  # UnpicklingError for pickled objects, RuntimeError for damaged zips
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{ckpt_path}: not loadable as a weights-only torch checkpoint ({msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{ckpt_path}: no state_dict of tensors found")
    state = from_upstream(obj)
    if not state:
        raise CheckpointError(f"{ckpt_path}: no WavTokenizer keys (feature_extractor.*, backbone.*, head.*)")
    if "quantizer.inited" in state and float(state["quantizer.inited"].reshape(-1)[0]) == 0:
        raise CheckpointError(f"{ckpt_path}: the codebook was never initialised (inited = 0); the reference would "
                              "run k-means on your input instead of using trained codes")
    with torch.device("meta"):
        net = WavTokenizerNet(cfg)
    _load_state(net, state, ckpt_path)
    return WavTokenizer(net.to(device), None, "sinc")
