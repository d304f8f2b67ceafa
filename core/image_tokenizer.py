"""Images <-> VQ codes with the Chameleon VQGAN: Meta's exact pre/post-processing, checkpoint loaders, bundles.

- ``open_image``: a file or bytes -> PIL image as stored (EXIF orientation ignored, as Meta's code does, unless
  ``exif_transpose``), with one clear error per bad input.
- ``preprocess``: Meta's recipe (docs/formats.md): alpha on white, LANCZOS short side -> R with ``round``, centre crop
  ``(W-R)//2``, ``x/255*2-1``, CHW float32.
- ``to_pil``: Meta's post-processing: clamp, [0, 1], x255, truncate to uint8.
- ``VQGANTokenizer``: the ImageTokenizer protocol over a ``VQModel``, batched.
- ``load_vqgan`` (original ``vqgan.yaml`` + ``vqgan.ckpt``), ``from_hf_vqmodel`` (encoder-only transformers keys).
"""
from __future__ import annotations

import io
import os
import pickle
import re
import warnings
import zipfile
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .bundle import register_tokenizer
from .errors import AromniError, CheckpointError, InputError
from .vqgan import CONFIGS, VQGANConfig, VQModel, config_from_ddconfig, config_from_state, get_config

MIN_SIDE = 8  # pixels; smaller images carry too little to tokenize meaningfully
MAX_PIXELS = 100_000_000  # larger headers are refused as likely decompression bombs
WEIGHTS_FILE = "image_tokenizer.safetensors"
DECODER_NEEDED = ("this image tokenizer has only the encoder (transformers checkpoints drop the VQGAN decoder); "
                  "decoding images needs the original Chameleon tokenizer/vqgan.yaml + vqgan.ckpt")


# ----------------------------------------------------------------------------------------------
# Reading images
# ----------------------------------------------------------------------------------------------
def _name(src, source: str | None) -> str:
    return source or (os.fspath(src) if isinstance(src, (str, os.PathLike)) else "<stdin>")


def _open_lazy(src, name: str):
    """PIL.Image.open (header only) with size checks; raises InputError."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise InputError("empty input (0 bytes), expected an image", name)
        fp = io.BytesIO(src)
    else:
        fp = os.fspath(src)
        if os.path.isdir(fp):
            raise InputError("is a directory, expected an image file", name)
        if os.path.isfile(fp) and os.path.getsize(fp) == 0:
            raise InputError("empty file (0 bytes), expected an image", name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below is stricter
            img = Image.open(fp)
    except FileNotFoundError:
        raise InputError("no such file", name) from None
    except Image.DecompressionBombError as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(m.group(1)) / 1e6:.0f} megapixels" if m else "too many pixels"
        raise InputError(f"image header claims {size}; images over {MAX_PIXELS // 1_000_000} megapixels are refused "
                         "as a likely decompression bomb", name) from None
    except UnidentifiedImageError:
        raise InputError("not an image file (no known image format)", name) from None
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror or e})", name) from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise InputError(f"image is {w}x{h} ({w * h / 1e6:.0f} megapixels); images over {MAX_PIXELS // 1_000_000} "
                         "megapixels are refused as a likely decompression bomb", name)
    if min(w, h) < MIN_SIDE:
        img.close()
        raise InputError(f"image is {w}x{h} pixels, too small: the minimum is {MIN_SIDE}x{MIN_SIDE}", name)
    return img


def probe_image(src, source: str | None = None) -> tuple[int, int]:
    """Check a file or bytes is an acceptable image from its header alone; returns (width, height)."""
    img = _open_lazy(src, _name(src, source))
    size = img.size
    img.close()
    return size


def open_image(src, source: str | None = None, exif_transpose: bool = False):
    """A path (or the bytes of a file) -> loaded PIL image.

    Pixels are taken as stored, as Meta's Chameleon tokenizer reads them (a photo whose EXIF says "rotate" is
    tokenized sideways, exactly as the reference models saw such photos in training); ``exif_transpose`` turns
    the image upright first (PIL's ``ImageOps.exif_transpose``). The mode is kept (alpha is composited by
    ``preprocess``). Raises InputError for a missing, empty, non-image, truncated, too small (< MIN_SIDE) or
    too large (> MAX_PIXELS) image.
    """
    from PIL import ImageOps

    name = _name(src, source)
    img = _open_lazy(src, name)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"truncated or corrupt image data ({e})", name) from None
    if exif_transpose:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a malformed EXIF block must not block tokenization: keep the stored orientation
            pass
    return img


# ----------------------------------------------------------------------------------------------
# Meta's preprocessing and post-processing
# ----------------------------------------------------------------------------------------------
def whiten_transparency(img):
    """Non-RGB -> RGB; pixels with alpha < 255 are blended onto white: ``(1-a)*255 + a*rgb``, truncated.

    16-bit grey images (PIL modes ``I;16*``, and ``I`` holding values above 255) are scaled to 8 bits first
    (``round(v / 257)``): PIL's own conversion clips them, which turns almost every such picture white."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        v = np.asarray(img, dtype=np.float64)
        if img.mode != "I" or v.max(initial=0) > 255:
            v = v / 257.0
        img = Image.fromarray(np.clip(np.round(v), 0, 255).astype(np.uint8), "L")
    rgba = np.asarray(img.convert("RGBA"))
    if (rgba[:, :, 3] == 255).all():
        return img.convert("RGB")
    a = rgba[:, :, 3:4] / 255.0
    rgb = (1.0 - a) * 255.0 + a * rgba[:, :, :3]
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def resize_crop_box(w: int, h: int, r: int) -> tuple[int, int, int, int]:
    """Short side -> r: returns (new_w, new_h, x0, y0) of the resize and centre crop (Python ``round``)."""
    scale = r / min(w, h)
    nw, nh = round(scale * w), round(scale * h)
    return nw, nh, (nw - r) // 2, (nh - r) // 2


def preprocess(img, resolution: int) -> np.ndarray:
    """PIL image -> float32 [3, R, R] in [-1, 1], exactly as Meta's Chameleon image tokenizer."""
    from PIL import Image

    img = whiten_transparency(img)
    nw, nh, x0, y0 = resize_crop_box(img.width, img.height, resolution)
    img = img.resize((nw, nh), Image.Resampling.LANCZOS)
    img = img.crop((x0, y0, x0 + resolution, y0 + resolution))
    x = np.asarray(img, dtype=np.float64) / 255.0 * 2.0 - 1.0  # float64 as the reference, then float32
    return np.ascontiguousarray(x.astype(np.float32).transpose(2, 0, 1))


def preprocess_batch(images: Sequence, resolution: int) -> torch.Tensor:
    """PIL images -> [N, 3, R, R] float32."""
    return torch.from_numpy(np.stack([preprocess(im, resolution) for im in images]))


def to_pil(x: torch.Tensor):
    """[3, R, R] pixels in [-1, 1] -> PIL RGB: clamp, (x+1)/2, x255, truncate (astype uint8) as the reference."""
    from PIL import Image

    a = ((x.detach().float().clamp(-1.0, 1.0) + 1.0) / 2.0).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray((255 * a).astype(np.uint8), "RGB")


def fit_codes(codes: Sequence[int] | torch.Tensor, n: int) -> torch.Tensor:
    """Pad a short code sequence by repeating its first code, or truncate a long one (reference decoding)."""
    c = torch.as_tensor(codes, dtype=torch.long).flatten()
    if c.numel() == 0:
        raise InputError("empty image: no codes to decode")
    if c.numel() < n:
        c = torch.cat([c, c[:1].expand(n - c.numel())])
    return c[:n]


# ----------------------------------------------------------------------------------------------
# The tokenizer
# ----------------------------------------------------------------------------------------------
class VQGANTokenizer:
    """ImageTokenizer over a VQModel: PIL images <-> codes [N, n_tokens], several images per forward pass."""

    type_name = "vqgan"

    def __init__(self, model: VQModel, batch_size: int = 8):
        self.model = model.eval()
        self.cfg: VQGANConfig = model.cfg
        self.n_tokens = self.cfg.n_tokens
        self.codebook_size = self.cfg.n_embed
        self.resolution = self.cfg.resolution
        self.grid = self.cfg.grid
        self.embed_dim = self.cfg.embed_dim
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return self.model.quantize.embedding.weight.device

    @property
    def has_decoder(self) -> bool:
        return self.model.has_decoder

    def to(self, device) -> "VQGANTokenizer":
        self.model.to(device)
        return self

    def preprocess(self, images: Sequence) -> torch.Tensor:
        return preprocess_batch(images, self.resolution)

    # --- encode -------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, R, R] in [-1, 1] -> codes [N, n_tokens] (int64, CPU)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.cfg.in_channels, self.resolution, self.resolution):
            raise InputError(f"expected pixels [N, {self.cfg.in_channels}, {self.resolution}, {self.resolution}], "
                             f"got {list(x.shape)}")
        out = [self.model.encode(chunk.to(self.device, torch.float32)).cpu() for chunk in x.split(self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.n_tokens, dtype=torch.long)

    def encode(self, images) -> torch.Tensor:
        """PIL images (or one image) -> codes [N, n_tokens], preprocessed as Meta's reference.

        A tensor is taken as already-preprocessed pixels [N, 3, R, R] in [-1, 1]."""
        from PIL import Image

        if isinstance(images, torch.Tensor):
            return self.encode_pixels(images)
        if isinstance(images, Image.Image):
            images = [images]
        images = list(images)
        out = [self.encode_pixels(self.preprocess(images[i:i + self.batch_size]))
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.n_tokens, dtype=torch.long)

    @torch.inference_mode()
    def round_trip_error(self, images) -> tuple[torch.Tensor, list[float] | None]:
        """PIL images -> (codes as ``encode``, each image's round-trip error: the root-mean-square difference, in
        8-bit levels (0-255), between the preprocessed image and the decode of its codes). The error is how well
        the tokenizer covers a picture: one unlike its training images decodes far from itself. None for a
        tokenizer without a decoder."""
        images = list(images)
        if not self.has_decoder:
            return self.encode(images), None
        codes, errors = [torch.zeros(0, self.n_tokens, dtype=torch.long)], []
        for i in range(0, len(images), self.batch_size):
            x = self.preprocess(images[i:i + self.batch_size])
            c = self.encode_pixels(x)
            y = self.decode_pixels(c).clamp(-1, 1)
            codes.append(c)
            errors += [127.5 * float(e) for e in (y - x).pow(2).flatten(1).mean(1).sqrt()]
        return torch.cat(codes), errors

    # --- decode -------------------------------------------------------------------------------
    def _code_rows(self, codes) -> torch.Tensor:
        if isinstance(codes, torch.Tensor) and codes.ndim == 1:
            codes = codes[None]
        elif not isinstance(codes, torch.Tensor) and len(codes) and np.ndim(codes[0]) == 0:
            codes = [codes]  # one flat sequence
        rows = torch.stack([fit_codes(c, self.n_tokens) for c in codes]) if len(codes) else \
            torch.zeros(0, self.n_tokens, dtype=torch.long)
        bad = (rows < 0) | (rows >= self.codebook_size)
        if bad.any():
            v = int(rows[bad][0])
            raise InputError(f"image code {v} is outside the codebook (0..{self.codebook_size - 1})")
        return rows

    @torch.inference_mode()
    def decode_pixels(self, codes) -> torch.Tensor:
        """codes [N, L] (or one sequence; L != n_tokens is padded/truncated) -> pixels [N, 3, R, R] (unclamped)."""
        if not self.has_decoder:
            raise AromniError(DECODER_NEEDED)
        rows = self._code_rows(codes)
        out = [self.model.decode(chunk.to(self.device)).float().cpu() for chunk in rows.split(self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 3, self.resolution, self.resolution)

    def decode(self, codes) -> list:
        """codes [N, n_tokens] -> N PIL RGB images of resolution x resolution."""
        return [to_pil(x) for x in self.decode_pixels(codes)]

    def codebook(self) -> torch.Tensor:
        """[codebook_size, embed_dim] VQ embedding."""
        return self.model.quantize.embedding.weight.detach()

    # --- bundle -------------------------------------------------------------------------------
    def save(self, root: str) -> dict:
        from safetensors.torch import save_file

        os.makedirs(root, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        tmp = os.path.join(root, WEIGHTS_FILE + ".tmp")
        save_file(state, tmp, metadata={"format": "aromni-vqgan"})
        os.replace(tmp, os.path.join(root, WEIGHTS_FILE))
        return {"type": self.type_name, "config": self.cfg.to_dict(), "weights": WEIGHTS_FILE,
                "decoder": self.has_decoder}


def build_image_tokenizer(preset: str | VQGANConfig = "tiny", seed: int = 0, device="cpu",
                          **overrides) -> VQGANTokenizer:
    """A randomly initialised tokenizer from a preset name ("chameleon", "small", "tiny") or a config."""
    cfg = preset if isinstance(preset, VQGANConfig) else get_config(preset, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VQModel(cfg)
    return VQGANTokenizer(model.to(device))


# ----------------------------------------------------------------------------------------------
# Loading weights
# ----------------------------------------------------------------------------------------------
def _assign(cfg: VQGANConfig, state: dict, decoder: bool, device, source: str) -> VQModel:
    """Build on the meta device and assign ``state`` (fp32, on ``device``); extra keys are ignored."""
    with torch.device("meta"):
        model = VQModel(cfg, decoder=decoder)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state)
    bad = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
           for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or bad:
        parts = []
        if missing:
            parts.append(f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''} ({len(missing)} keys)")
        if bad:
            parts.append(f"shape mismatch {bad[:2]}{' ...' if len(bad) > 2 else ''} ({len(bad)} keys)")
        raise CheckpointError(f"{source}: not a VQGAN of this configuration: " + "; ".join(parts))
    model.load_state_dict({k: state[k].to(device=device, dtype=torch.float32) for k in expected}, assign=True)
    return model.eval()


def _strip_prefix(state: dict) -> dict:
    """Keep the VQ model's keys, whatever they are nested under ("", "model.vqmodel.", "vqmodel.", ...)."""
    anchor = "encoder.conv_in.weight"
    hits = [k for k in state if k.endswith(anchor)]
    if not hits:
        raise CheckpointError("no VQGAN encoder keys (encoder.conv_in.weight) in the checkpoint")
    prefix = min(hits, key=len)[: -len(anchor)]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class _Inert:
    """Stand-in for a class a training checkpoint pickles (callbacks, configs); its code is never run."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state


def torch_load_weights(path: str) -> dict:
    """``torch.load`` with ``weights_only=True`` (memory-mapped when the file format allows).

    Lightning checkpoints also pickle callback and hyper-parameter objects; those globals are replaced by
    inert stand-ins, so nothing from the file is ever executed, and the tensors load as usual.
    """
    def load(mmap: bool):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        try:
            return load(mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return load(mmap=False)  # legacy (non-zip) torch.save format cannot be memory-mapped
    except pickle.UnpicklingError:
        pass
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable torch checkpoint ({str(e).splitlines()[0]})") from None
    if not zipfile.is_zipfile(path):  # garbage, or a legacy-format file holding non-tensor objects
        raise CheckpointError(f"{path}: unreadable torch checkpoint (weights-only unpickling failed and the file "
                              "is not a torch.save zip archive)")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:
        raise CheckpointError(f"{path}: holds Python objects that weights-only loading refuses and that cannot be "
                              f"inspected safely ({str(e).splitlines()[0]})") from None
    stubs: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
        (type(n.rpartition(".")[2], (_Inert,), {"__module__": n.rpartition(".")[0]}), n) for n in names]
    try:
        with torch.serialization.safe_globals(stubs):
            return load(mmap=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load safely with weights_only ({str(e).splitlines()[0]})") from None


def _read_yaml(path: str) -> dict:
    import yaml

    from . import yamlio

    try:
        with open(path) as f:
            doc = yamlio.loads(f.read(), f.name)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise CheckpointError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    params = doc.get("model", doc).get("params", doc.get("model", doc)) if isinstance(doc, dict) else None
    if not isinstance(params, dict) or "ddconfig" not in params or "n_embed" not in params:
        raise CheckpointError(f"{path}: not a taming VQGAN config (expected model.params.ddconfig and n_embed)")
    return params


def load_vqgan(yaml_path: str, ckpt_path: str, device="cpu") -> VQGANTokenizer:
    """The original Chameleon ``tokenizer/vqgan.yaml`` + ``vqgan.ckpt`` (Lightning ``state_dict`` nesting).

    Training-only entries (loss/discriminator weights, optimiser state) are ignored, as Meta's
    ``strict=False`` load does; missing or misshaped model keys are errors.
    """
    try:
        cfg = config_from_ddconfig(_read_yaml(yaml_path))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{yaml_path}: unusable VQGAN ddconfig ({e})") from None
    ckpt = torch_load_weights(ckpt_path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{ckpt_path}: expected a state_dict of tensors")
    state = _strip_prefix(state)
    decoder = any(k.startswith("decoder.") for k in state)
    if not decoder:
        raise CheckpointError(f"{ckpt_path}: has no decoder weights; the original vqgan.ckpt includes them")
    return VQGANTokenizer(_assign(cfg, state, True, device, ckpt_path))


def from_hf_vqmodel(state: dict, device="cpu", resolution: int = 512, source: str = "transformers checkpoint"
                    ) -> VQGANTokenizer:
    """The ``model.vqmodel.*`` keys of a transformers Chameleon checkpoint (prefix stripped or not).

    Those files hold the encoder, codebook, quant_conv and post_quant_conv only, so the result encodes but
    raises a clear AromniError on decode. Decoder keys, if a file carries them, are loaded too.
    """
    state = _strip_prefix(state)
    cfg = config_from_state(state, resolution=resolution)
    decoder = "decoder.conv_out.weight" in state
    return VQGANTokenizer(_assign(cfg, state, decoder, device, source))


@register_tokenizer("image", "vqgan")
def _load_bundle_tokenizer(spec: dict, root: str, device="cpu") -> VQGANTokenizer:
    from safetensors.torch import load_file

    path = os.path.join(root, spec.get("weights", WEIGHTS_FILE))
    try:
        cfg = VQGANConfig.from_dict(spec["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{root}: bad image tokenizer spec ({e})") from None
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: image tokenizer weights are missing")
    try:
        state = load_file(path)
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None
    return VQGANTokenizer(_assign(cfg, state, bool(spec.get("decoder", True)), device, path))


__all__ = ["VQGANTokenizer", "VQGANConfig", "CONFIGS", "build_image_tokenizer", "load_vqgan", "from_hf_vqmodel",
           "open_image", "probe_image", "preprocess", "to_pil", "whiten_transparency", "resize_crop_box",
           "fit_codes", "torch_load_weights", "MIN_SIDE", "MAX_PIXELS"]
