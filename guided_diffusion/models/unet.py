"""The text-conditioned UNet noise predictor ``eps_theta(x_t, t, text)``.

The network is a U-Net (Ronneberger et al. 2015) that predicts the noise ``eps`` of
``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` (Ho et al. 2020, "Denoising Diffusion
Probabilistic Models", Eqs. 4 and 14), with the residual and attention blocks of Dhariwal & Nichol 2021.
Timesteps enter through a sinusoidal embedding and an MLP; the pooled text feature (masked mean over
real tokens, projected) is added to that embedding, and the text tokens are attended to by
cross-attention at the resolutions in ``attention_resolutions`` and in the middle block. Without text
features the model is unconditional. With ``coordinate_channels`` the input gets two more channels, the
pixel's row and column scaled to [-1, 1] (CoordConv, Liu et al. 2018), so that the convolutions, which
are otherwise blind to where they are, can place what the text asks for at a position ("in the top
left").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig, PretrainedModel
from .layers import (
    ConditionedSequential,
    CrossAttention,
    Downsample,
    RenamedKeys,
    ResBlock,
    SelfAttention,
    Upsample,
    normalization,
    timestep_embedding,
    zero_module,
)
from .ops import group_norm_act


@dataclass
class UNetConfig(ModelConfig):
    """Architecture of :class:`UNet`.

    ``channel_mult[i] * base_channels`` is the width of level ``i``; each level after the first halves
    the resolution, so ``image_size`` must be divisible by ``2 ** (len(channel_mult) - 1)``.
    ``attention_resolutions`` lists the feature-map sizes (in pixels) that get self- and cross-attention.
    ``coordinate_channels`` appends the row and column coordinate planes to the input.
    ``to_dict`` / ``from_dict`` (from :class:`ModelConfig`) convert to and from JSON-able dicts,
    refusing unknown keys.
    """

    section = "unet"

    image_size: int
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    num_heads: int = 4
    text_dim: int = 512
    dropout: float = 0.0
    coordinate_channels: bool = False

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        positive = ("image_size", "in_channels", "out_channels", "base_channels", "num_heads", "text_dim")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"UNetConfig.{name} must be positive, got {getattr(self, name)}")
        if not self.channel_mult or min(self.channel_mult) <= 0:
            raise ValueError(
                f"UNetConfig.channel_mult must be a non-empty list of positive ints, got {self.channel_mult}"
            )
        if self.num_res_blocks < 1:
            raise ValueError(f"UNetConfig.num_res_blocks must be at least 1, got {self.num_res_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"UNetConfig.image_size ({self.image_size}) must be divisible by {factor} "
                f"(2 ** (len(channel_mult) - 1)); change image_size or channel_mult"
            )
        for mult in self.channel_mult:
            if (mult * self.base_channels) % self.num_heads:
                raise ValueError(
                    f"every level width (channel_mult * base_channels = {mult * self.base_channels}) must be "
                    f"divisible by UNetConfig.num_heads ({self.num_heads})"
                )


class UNet(PretrainedModel, RenamedKeys):
    """Noise predictor conditioned on the timestep and, optionally, on text tokens.

    Call: ``unet(x [B, C_in, H, W], t [B], text_features [B, L, D] | None, text_mask [B, L] | None)``
    -> ``[B, C_out, H, W]`` (contiguous). The output layer is zero-initialised, so a fresh model predicts
    zeros. Inside, feature maps are channels-last, the layout in which CPU convolutions run fastest;
    parameters keep the default layout, so checkpoints are unaffected.

    :meth:`enable_gradient_checkpointing` trades compute for memory in training (Chen et al. 2016,
    "Training Deep Nets with Sublinear Memory Cost"): each block keeps only its inputs for the backward
    pass and recomputes its activations there (the same gradients, one more forward). It changes
    neither the config nor the weights.

    The output layer is ``out_conv(SiLU(out_norm(h)))``; checkpoints that hold it under its old keys
    ``out.0`` (the norm) and ``out.2`` (the conv) load through :attr:`renamed_keys`, as do the residual
    blocks' (:class:`~guided_diffusion.models.layers.ResBlock`).
    """

    config_class = UNetConfig
    renamed_keys = {
        "out.0.weight": "out_norm.weight",
        "out.0.bias": "out_norm.bias",
        "out.2.weight": "out_conv.weight",
        "out.2.bias": "out_conv.bias",
    }

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        base = config.base_channels
        emb_dim = 4 * base
        self.time_embed = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.text_pool_proj = nn.Linear(config.text_dim, emb_dim)

        def res(in_ch: int, out_ch: int) -> ResBlock:
            return ResBlock(in_ch, out_ch, emb_dim, config.dropout)

        def attention(ch: int) -> list[nn.Module]:
            return [SelfAttention(ch, config.num_heads), CrossAttention(ch, config.text_dim, config.num_heads)]

        in_channels = config.in_channels + (2 if config.coordinate_channels else 0)
        self.input_blocks = nn.ModuleList([ConditionedSequential(nn.Conv2d(in_channels, base, 3, padding=1))])
        skip_channels = [base]
        ch, resolution = base, config.image_size
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * base)]
                ch = mult * base
                if resolution in config.attention_resolutions:
                    layers += attention(ch)
                self.input_blocks.append(ConditionedSequential(*layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(ConditionedSequential(Downsample(ch)))
                skip_channels.append(ch)
                resolution //= 2

        self.middle_block = ConditionedSequential(res(ch, ch), *attention(ch), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mult * base)]
                ch = mult * base
                if resolution in config.attention_resolutions:
                    layers += attention(ch)
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                    resolution *= 2
                self.output_blocks.append(ConditionedSequential(*layers))

        self.out_norm = normalization(ch)
        self.out_conv = zero_module(nn.Conv2d(ch, config.out_channels, 3, padding=1))
        self.gradient_checkpointing = False

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each block's activations in the backward pass (in training mode with gradients on)."""
        self.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        """Keep every block's activations for the backward pass again (the default)."""
        self.gradient_checkpointing = False

    @property
    def num_parameters(self) -> int:
        """Total number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, text_features: torch.Tensor | None = None, text_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict from ``x [B, C_in, H, W]`` at timesteps ``t [B]`` (original ``0..T-1`` scale).

        ``text_features [B, L, D]`` are per-token text encoder states and ``text_mask`` bool ``[B, L]``
        marks the real tokens (all real when None). Returns ``[B, C_out, H, W]``.
        """
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.base_channels).to(x.dtype))
        if text_features is not None:
            emb = emb + self.text_pool_proj(self._pool_text(text_features.to(x.dtype), text_mask))

        if self.config.coordinate_channels:
            x = torch.cat([x, coordinate_planes(x)], dim=1)
        h = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for block in self.input_blocks:
            h = self._run(block, h, emb, text_features, text_mask)
            skips.append(h)
        h = self._run(self.middle_block, h, emb, text_features, text_mask)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, text_features, text_mask)
        return self.out_conv(group_norm_act(h, self.out_norm)).contiguous()

    def _run(self, block: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
        """``block(*args)``; with gradient checkpointing on, in training, its activations are recomputed
        in the backward pass instead of kept."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    @staticmethod
    def _pool_text(features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Mean of ``features [B, L, D]`` over the real tokens of ``mask [B, L]`` -> ``[B, D]`` (0 if none)."""
        if mask is None:
            return features.mean(dim=1)
        weights = mask.to(features.dtype)
        return torch.einsum("bld,bl->bd", features, weights) / weights.sum(dim=1, keepdim=True).clamp(min=1.0)


def coordinate_planes(x: torch.Tensor) -> torch.Tensor:
    """The row and column of each pixel of ``x [B, C, H, W]``, scaled to [-1, 1]: ``[B, 2, H, W]``."""
    batch, _, height, width = x.shape
    rows = torch.linspace(-1.0, 1.0, height, device=x.device, dtype=x.dtype)
    columns = torch.linspace(-1.0, 1.0, width, device=x.device, dtype=x.dtype)
    planes = torch.stack(torch.meshgrid(rows, columns, indexing="ij"))
    return planes.expand(batch, 2, height, width)
