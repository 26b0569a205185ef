"""A noise-aware CLIP: an image tower that sees x_t and t, and a text tower, in one embedding space.

The image tower is the noise-aware classifier's trunk (:class:`NoisyImageEncoder`: the UNet's encoder
half with its timestep embedding, attention-pooled) and the text tower is one of the toolkit's text
encoders (open_clip's text transformer); each is projected to ``embed_dim`` and L2-normalised, and
``logit_scale`` (learned, initialised to a temperature of 0.07 and capped at 100, as in CLIP: Radford et
al. 2021, "Learning Transferable Visual Models From Natural Language Supervision", Sec. 2.5) scales their
cosine similarities. Trained contrastively on noised images by ``train.clip`` (the noised CLIP of
GLIDE's CLIP guidance: Nichol et al. 2022, "GLIDE: Towards Photorealistic Image Generation and Editing
with Text-Guided Diffusion Models", Sec. 2.4). Its text tower on its own
(:attr:`NoiseAwareCLIP.text`) is a text encoder for a diffusion model that already knows what the
captions look like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..text import TextEncoder, build_text_encoder
from .classifier import NoisyEncoderConfig, NoisyImageEncoder
from .config import PretrainedModel


@dataclass
class CLIPConfig(NoisyEncoderConfig):
    """Architecture of :class:`NoiseAwareCLIP`: the image tower's fields are those of
    :class:`~guided_diffusion.models.classifier.NoisyEncoderConfig`; ``text_encoder`` is a text encoder
    config (see :mod:`guided_diffusion.text`), built trainable; both towers project to ``embed_dim``."""

    section = "clip"

    text_encoder: dict[str, Any] = field(default_factory=dict)
    embed_dim: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.text_encoder:
            raise ValueError("CLIPConfig.text_encoder must describe the text tower (backend, width, layers, ...)")
        if self.embed_dim < 1:
            raise ValueError(f"CLIPConfig.embed_dim must be positive, got {self.embed_dim}")


class NoiseAwareCLIP(PretrainedModel, nn.Module):
    """A CLIP whose image tower reads noisy images; ``logits(x_t [B, C, H, W], t [B], prompts)`` ->
    ``[B, len(prompts)]``.

    ``encode_image`` and ``encode_text`` give the unit-norm embeddings ``[B, embed_dim]``.
    """

    config_class = CLIPConfig

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.image = NoisyImageEncoder(config)
        self.text: TextEncoder = build_text_encoder({**config.text_encoder, "trainable": True})
        self.image_proj = nn.Linear(self.image.width, config.embed_dim, bias=False)
        self.text_proj = nn.Linear(self.text.width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t [B, C, H, W]``, ``t [B]`` -> unit-norm ``[B, embed_dim]``."""
        return F.normalize(self.image_proj(self.image.features(x, t)), dim=-1)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> unit-norm ``[B, embed_dim]``: the projected mean of the real tokens' features
        (the same pooling the UNet's pooled text pathway uses)."""
        features, mask = self.text.encode(prompts)
        weights = mask.to(features.dtype)
        pooled = torch.einsum("bld,bl->bd", features, weights) / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def restrict_vocabulary(self, prompts: list[str]) -> int:
        """Drop the text tower's token embeddings that ``prompts`` do not use (see
        :meth:`~guided_diffusion.text.OpenCLIPTextEncoder.restrict_vocabulary`), recording the kept ids
        in the config; returns how many are kept."""
        kept = self.text.restrict_vocabulary(prompts)
        self.config.text_encoder = {**self.config.text_encoder, "vocabulary": self.text.vocabulary}
        return kept

    def scale(self) -> torch.Tensor:
        """The temperature of the logits, ``exp(logit_scale)`` capped at 100."""
        return self.logit_scale.exp().clamp(max=100.0)

    def logits(self, x: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """``logits [B_images, B_prompts]``: the scaled cosine similarities of images and prompts."""
        image, text, scale = self(x, t, prompts)
        return scale * image @ text.T

    def forward(self, x: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image embeddings [B, E], text embeddings [B_prompts, E], scale [])``: what the
        contrastive loss takes."""
        return self.encode_image(x, t), self.encode_text(prompts), self.scale()
