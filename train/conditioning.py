"""Captions -> the UNet's text conditioning during training.

A trainable text encoder trains with the UNet: both sit in one :class:`TextConditionedUNet`, so that
``accelerator.prepare`` wraps a single module and the loss reaches both. A frozen encoder stays
outside the trained module; its features are computed without gradients and, since many captions
repeat (class-name captions, the empty caption of classifier-free guidance), kept per caption in a
least-recently-used cache.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from guided_diffusion.text import TextEncoder


class TextConditionedUNet(nn.Module):
    """The UNet and its trainable text encoder as one module: ``forward(x_t, t, tokens)``."""

    def __init__(self, unet: nn.Module, text_encoder: TextEncoder) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``x_t [B, C, H, W]``, ``t [B]``, ``tokens [B, L]`` -> the UNet's output ``[B, C, H, W]``."""
        features, mask = self.text_encoder(tokens)
        return self.unet(x_t, t, text_features=features, text_mask=mask)


class CachedTextFeatures:
    """``captions -> (features [B, L, D], mask [B, L])`` of a frozen encoder, cached per caption.

    A caption missing from the cache is encoded on its own, so that its features do not depend on
    which other captions missed with it: CPU kernels can round a row differently at another batch
    size (measured on an AVX-512 CPU), and a run resumed with an empty cache would otherwise train on
    features a few ulps off those of the uninterrupted run.

    Args:
        text_encoder: a frozen encoder, on the training device.
        max_entries: the number of captions to keep (least recently used ones go first); 0 disables.
    """

    def __init__(self, text_encoder: TextEncoder, max_entries: int) -> None:
        self.text_encoder = text_encoder
        self.max_entries = max_entries
        self.cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.max_entries == 0:
            return self.text_encoder.encode(captions)
        missing = list(dict.fromkeys(c for c in captions if c not in self.cache))
        for caption in missing:
            features, mask = self.text_encoder.encode([caption])
            self.cache[caption] = (features[0], mask[0])
        rows = []
        for caption in captions:
            self.cache.move_to_end(caption)
            rows.append(self.cache[caption])
        while len(self.cache) > self.max_entries:
            self.cache.popitem(last=False)
        return torch.stack([f for f, _ in rows]), torch.stack([m for _, m in rows])


class TextConditioning:
    """What trains, and the model keyword arguments for a batch of captions.

    ``module`` is the UNet alone (frozen encoder) or a :class:`TextConditionedUNet` (trainable one).
    ``model_kwargs(captions, device)`` gives ``{"text_features", "text_mask"}`` or ``{"tokens"}`` to
    match it.
    """

    def __init__(self, unet: nn.Module, text_encoder: TextEncoder, *, cache_size: int) -> None:
        self.text_encoder = text_encoder
        if text_encoder.trainable:
            self.module: nn.Module = TextConditionedUNet(unet, text_encoder)
        else:
            self.module = unet
            self.features = CachedTextFeatures(text_encoder, cache_size)

    def model_kwargs(self, captions: list[str], device: torch.device) -> dict[str, Any]:
        if self.text_encoder.trainable:
            return {"tokens": self.text_encoder.tokenize(captions).to(device)}
        features, mask = self.features(captions)
        return {"text_features": features, "text_mask": mask}
