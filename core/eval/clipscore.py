"""CLIPScore (Hessel et al. 2021): ``2.5 * max(cos(E_image, E_text), 0)`` with an open_clip model.

Weights are never downloaded: pass a local checkpoint file (with its architecture name, e.g. ViT-B-32's
``open_clip_pytorch_model.bin`` or ``.safetensors``) or a directory holding ``open_clip_config.json`` and
its weights (a Hugging Face open_clip repo snapshot). Captions get the paper's prefix "A photo depicts ".
"""
from __future__ import annotations

import os

import torch

from ..errors import AromniError, InputError, NotAvailableError, OptionError

CLIP_HINT = ("CLIPScore needs open_clip: pip install 'aromni[clip]' (open_clip_torch, and a torchvision "
             "built for your torch)")
WEIGHT = 2.5
PREFIX = "A photo depicts "


class ClipScorer:
    """Scores (image, caption) pairs; ``checkpoint`` is a weights file (with ``arch``) or an open_clip dir."""

    def __init__(self, checkpoint: str | None, arch: str = "ViT-B-32", device: str | torch.device = "cpu",
                 prefix: str = PREFIX):
        if not checkpoint:
            raise OptionError("clip_checkpoint", "CLIPScore needs a local open_clip checkpoint: {opt} FILE (an "
                              "open_clip architecture's weights, default ViT-B-32) or {opt} DIR "
                              "(open_clip_config.json + weights); aromni never downloads weights")
        if not os.path.exists(checkpoint):
            raise InputError("no such checkpoint file or directory", checkpoint)
        if os.path.isdir(checkpoint):
            files = os.listdir(checkpoint)
            if "open_clip_config.json" not in files:
                raise InputError("directory has no open_clip_config.json", checkpoint)
            # open_clip only warns when a directory has no weights and would score with a random model
            if not any(f.endswith((".safetensors", ".bin", ".pth")) for f in files):
                raise InputError("directory has no weights (*.safetensors, *.bin or *.pth)", checkpoint)
        try:
            import open_clip
        except Exception as e:  # noqa: BLE001 - a torchvision built for another torch fails with RuntimeError
            raise NotAvailableError(f"{CLIP_HINT} [{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}]"
                                    ) from None
        name = f"local-dir:{os.path.abspath(checkpoint)}" if os.path.isdir(checkpoint) else arch
        pretrained = None if os.path.isdir(checkpoint) else checkpoint
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
            self.tokenizer = open_clip.get_tokenizer(name)
        except Exception as e:  # noqa: BLE001 - open_clip raises RuntimeError/ValueError/KeyError for bad files
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InputError(f"cannot load as open_clip {arch if pretrained else 'model directory'} ({msg})",
                             checkpoint) from None
        self.model, self.preprocess = model.eval(), preprocess
        self.device, self.prefix = torch.device(device), prefix
        self.checkpoint, self.arch = checkpoint, (arch if pretrained else name)

    @torch.no_grad()
    def score(self, images: list, texts: list[str]) -> list[float]:
        """One CLIPScore per (PIL image, caption) pair."""
        if len(images) != len(texts):
            raise AromniError(f"{len(images)} images but {len(texts)} captions")
        if not images:
            return []
        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        tokens = self.tokenizer([self.prefix + t for t in texts]).to(self.device)
        img = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
        txt = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return (WEIGHT * (img * txt).sum(-1).clamp(min=0)).tolist()

    def info(self) -> dict:
        return {"clip_checkpoint": self.checkpoint, "clip_arch": self.arch, "weight": WEIGHT, "prefix": self.prefix}
