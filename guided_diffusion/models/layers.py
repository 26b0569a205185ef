"""Building blocks shared by the UNet and the noise-aware classifier.

Every block takes feature maps ``[B, C, H, W]``. Blocks that need more than the feature map say so
by type: :class:`ResBlock` takes the conditioning embedding ``[B, E]`` and :class:`CrossAttention`
takes text tokens ``[B, L, D]`` with their mask ``[B, L]``. :class:`ConditionedSequential` chains
blocks and hands each one what it needs, so a model is a list of stages.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Args:
        t: timesteps ``[B]`` on the original ``0..T-1`` scale, integer or float.
        dim: embedding width.
        max_period: the longest wavelength; the frequencies are ``max_period ** (-k / half)``.

    Returns:
        ``[B, dim]`` float32: ``cos`` features then ``sin`` features (a zero column pads odd ``dim``).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def normalization(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm over ``channels`` with the largest group count ``<= max_groups`` that divides it."""
    groups = math.gcd(channels, max_groups)
    return nn.GroupNorm(groups, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it (blocks start as the identity)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding by scale and shift.

    ``h = conv(SiLU(GroupNorm(x)))``; ``h = GroupNorm(h) * (1 + scale) + shift`` with ``(scale, shift)``
    projected from the embedding; ``h = conv(dropout(SiLU(h)))`` (zero-initialised, so the block starts
    as its skip path); output ``skip(x) + h`` where ``skip`` is a 1x1 conv when the channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            normalization(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.out_norm = normalization(out_channels)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x [B, C_in, H, W]``, ``emb [B, E]`` -> ``[B, C_out, H, W]``."""
        h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        h = torch.addcmul(shift, self.out_norm(h), 1 + scale)
        return self.skip(x) + self.out_layers(h)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, N, C]`` -> ``[B, heads, N, C // heads]``."""
    b, n, c = x.shape
    return x.view(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, heads, N, c]`` -> ``[B, N, heads * c]``."""
    b, h, n, c = x.shape
    return x.transpose(1, 2).reshape(b, n, h * c)


class _SpatialAttention(nn.Module):
    """Shared frame of the attention blocks: GroupNorm, queries from the feature map, output
    projection (zero-initialised, so the block starts as the identity) and residual."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = normalization(channels)
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> normalised positions ``[B, H*W, C]``."""
        return self.norm(x).flatten(2).transpose(1, 2)

    def _residual(self, x: torch.Tensor, attended: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Project ``attended [B, heads, H*W, c]`` and add it to ``x [B, C, H, W]``.

        ``keep`` (bool ``[B]``) drops the update of the samples where it is False.
        """
        out = self.proj_out(_merge_heads(attended))
        if keep is not None:
            out = out * keep[:, None, None].to(out.dtype)
        return x + out.transpose(1, 2).reshape(x.shape)


class SelfAttention(_SpatialAttention):
    """Multi-head self-attention over the ``H*W`` spatial positions of ``[B, C, H, W]``."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__(channels, num_heads)
        self.qkv = nn.Linear(channels, 3 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` -> ``[B, C, H, W]``."""
        b, n = x.shape[0], x.shape[2] * x.shape[3]
        qkv = self.qkv(self._tokens(x)).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self._residual(x, attended)


class CrossAttention(_SpatialAttention):
    """Multi-head attention from the spatial positions of ``[B, C, H, W]`` to text tokens ``[B, L, D]``.

    ``context_mask [B, L]`` is a key padding mask: True marks real tokens, False padding, which no
    position attends to. A row with no real token gets no update (the block is the identity for that
    sample) instead of NaN. Without context the block is the identity.
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int) -> None:
        super().__init__(channels, num_heads)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x [B, C, H, W]``, ``context [B, L, D]``, ``context_mask`` bool ``[B, L]`` -> ``[B, C, H, W]``."""
        if context is None:
            return x
        b, length = context.shape[:2]
        q = _split_heads(self.q(self._tokens(x)), self.num_heads)
        kv = self.kv(context.to(x.dtype)).view(b, length, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if context_mask is None:
            return self._residual(x, F.scaled_dot_product_attention(q, kv[0], kv[1]))
        context_mask = context_mask.to(torch.bool)
        has_tokens = context_mask.any(dim=1)
        # Rows without any real token attend everywhere (finite, no NaN) and their update is dropped.
        attend = (context_mask | ~has_tokens[:, None])[:, None, None, :]
        attended = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=attend)
        return self._residual(x, attended, keep=has_tokens)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv: ``[B, C, H, W]`` -> ``[B, C_out, H/2, W/2]``."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution (nearest) then a 3x3 conv: ``[B, C, H, W]`` -> ``[B, C_out, 2H, 2W]``."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ConditionedSequential(nn.Sequential):
    """A chain of blocks; each gets the inputs its type needs.

    :class:`ResBlock` gets the embedding ``[B, E]``, :class:`CrossAttention` the text tokens and mask,
    every other block only the feature map.
    """

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x [B, C, H, W]``, ``emb [B, E]``, ``context [B, L, D]``, ``context_mask [B, L]`` -> ``[B, C', H', W']``."""
        for block in self:
            if isinstance(block, ResBlock):
                x = block(x, emb)
            elif isinstance(block, CrossAttention):
                x = block(x, context, context_mask)
            else:
                x = block(x)
        return x
