"""Building blocks shared by the UNet and the noise-aware classifier.

Every block takes feature maps ``[B, C, H, W]``. Blocks that need more than the feature map say so
by type: they are :class:`ConditionedBlock` s, called with the conditioning embedding ``[B, E]`` and
the text tokens ``[B, L, D]`` with their mask ``[B, L]``, each using what it needs (:class:`ResBlock`
the embedding, :class:`CrossAttention` the text). :class:`ConditionedSequential` chains blocks and
hands the conditioned ones those inputs, so a model is a list of stages.

The blocks accept either memory layout and keep the one they are given; on CPU the UNet runs them
channels-last (``[B, H, W, C]`` in memory), where oneDNN's convolutions are fastest. GroupNorm, the
embedding's scale and shift, and SiLU run as one fused step
(:func:`~guided_diffusion.models.ops.group_norm_act`) whose cost does not depend on the layout.

A module whose parameters were renamed since checkpoints were saved lists the old names in
:attr:`RenamedKeys.renamed_keys`; loading a state dict renames them (:class:`RenamedKeys`).
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .ops import group_norm_act


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: the positional encoding of Vaswani et al.
    2017 ("Attention Is All You Need", Sec. 3.5) with the timestep as the position, as in Ho et al. 2020.

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
    """GroupNorm (Wu & He 2018) over ``channels`` with the largest group count ``<= max_groups`` that
    divides it."""
    groups = math.gcd(channels, max_groups)
    return nn.GroupNorm(groups, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it (blocks start as the identity)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class RenamedKeys(nn.Module):
    """A module some of whose state-dict keys were renamed after checkpoints were saved with the old ones.

    :attr:`renamed_keys` maps each old key, relative to the module, to its current key. Every load of a
    state dict into the module (``load_state_dict``, and so ``from_pretrained`` and accelerate's
    ``load_state``) renames the old keys it finds before the parameters are matched, so old checkpoints
    load as they are. Only the listed keys are renamed: any other unknown key is still unexpected, and a
    state dict that holds a key under both names keeps the old one, which strict loading refuses.
    The state dicts the module gives (``state_dict()``) use the current keys.
    """

    renamed_keys: ClassVar[dict[str, str]] = {}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for old, new in self.renamed_keys.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def renamed_keys(module: nn.Module) -> dict[str, str]:
    """Every old state-dict key of ``module`` and its submodules (:class:`RenamedKeys`), as a full key
    such as ``"input_blocks.1.0.in_layers.0.weight"``, mapped to its current full key.

    For state kept by parameter name outside ``load_state_dict`` (an EMA's shadow weights, say):
    ``{renames.get(key, key): value for key, value in old_state.items()}``.
    """
    renames = {}
    for name, submodule in module.named_modules():
        if isinstance(submodule, RenamedKeys):
            prefix = f"{name}." if name else ""
            renames.update({prefix + old: prefix + new for old, new in submodule.renamed_keys.items()})
    return renames


class ConditionedBlock(nn.Module, abc.ABC):
    """A block that needs more than the feature map: the conditioning embedding, the text, or both.

    :class:`ConditionedSequential` calls every such block as
    ``block(x, emb=emb, context=context, context_mask=context_mask)``; each uses the inputs it needs
    and ignores the others. The conditioning inputs are keyword-only, so that a call written for
    another block's signature fails instead of putting the text in the embedding's place. Any other
    module in a :class:`ConditionedSequential` is called with the feature map alone.
    """

    @abc.abstractmethod
    def forward(
        self, x: torch.Tensor, *, emb: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x [B, C, H, W]``, the embedding ``emb [B, E]``, text tokens ``context [B, L, D]`` (or None)
        and their mask ``context_mask`` bool ``[B, L]`` (True for real tokens; None: all real) ->
        ``[B, C', H', W']``."""


class ResBlock(RenamedKeys, ConditionedBlock):
    """Residual block conditioned on an embedding by scale and shift (AdaGN, Dhariwal & Nichol 2021,
    "Diffusion Models Beat GANs on Image Synthesis", Sec. 3.1; the residual form of He et al. 2016).

    ``h = in_conv(SiLU(in_norm(x)))``; ``h = out_norm(h) * (1 + scale) + shift`` with ``(scale, shift)``
    projected from the embedding by ``emb_layers``; ``h = out_conv(dropout(SiLU(h)))`` (zero-initialised,
    so the block starts as its skip path); output ``skip(x) + h`` where ``skip`` is a 1x1 conv when the
    channel count changes. Each normalisation runs fused with the scale, shift and SiLU that follow it
    (:func:`~guided_diffusion.models.ops.group_norm_act`). The text is not used.

    The submodules are registered in this reading order, the order the parameters had when the norms and
    convolutions sat in ``nn.Sequential`` s, so optimizer states saved then still line up; the old keys
    (``in_layers.0``, ``in_layers.2``, ``out_layers.2``) load through :attr:`renamed_keys`.
    """

    renamed_keys = {
        "in_layers.0.weight": "in_norm.weight",
        "in_layers.0.bias": "in_norm.bias",
        "in_layers.2.weight": "in_conv.weight",
        "in_layers.2.bias": "in_conv.bias",
        "out_layers.2.weight": "out_conv.weight",
        "out_layers.2.bias": "out_conv.bias",
    }

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_norm = normalization(in_channels)
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.out_norm = normalization(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(
        self, x: torch.Tensor, *, emb: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x [B, C_in, H, W]``, ``emb [B, E]`` -> ``[B, C_out, H, W]`` (``context`` and its mask unused)."""
        h = self.in_conv(group_norm_act(x, self.in_norm))
        scale, shift = self.emb_layers(emb).to(h.dtype).chunk(2, dim=1)
        return self.skip(x) + self.out_conv(self.dropout(group_norm_act(h, self.out_norm, scale, shift)))


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
        """``[B, C, H, W]`` -> normalised positions ``[B, H*W, C]`` (a view for channels-last ``x``)."""
        return group_norm_act(x, self.norm, act=False).flatten(2).transpose(1, 2)

    def _residual(self, x: torch.Tensor, attended: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Project ``attended [B, heads, H*W, c]`` and add it to ``x [B, C, H, W]``.

        ``keep`` (bool ``[B]``) drops the update of the samples where it is False.
        """
        out = self.proj_out(_merge_heads(attended))
        if keep is not None:
            out = out * keep[:, None, None].to(out.dtype)
        return x + out.transpose(1, 2).unflatten(2, x.shape[2:])


class SelfAttention(_SpatialAttention):
    """Multi-head self-attention over the ``H*W`` spatial positions of ``[B, C, H, W]``: scaled
    dot-product attention ``softmax(Q K^T / sqrt(d)) V`` (Vaswani et al. 2017, "Attention Is All You
    Need", Eq. 1) per head, with queries, keys and values from the normalised positions."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__(channels, num_heads)
        self.qkv = nn.Linear(channels, 3 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` -> ``[B, C, H, W]``."""
        b, n = x.shape[0], x.shape[2] * x.shape[3]
        qkv = self.qkv(self._tokens(x)).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self._residual(x, attended)


class CrossAttention(_SpatialAttention, ConditionedBlock):
    """Multi-head attention from the spatial positions of ``[B, C, H, W]`` to text tokens ``[B, L, D]``:
    queries from the positions, keys and values from the tokens (Vaswani et al. 2017, Eq. 1; text
    conditioning by cross-attention as in Rombach et al. 2022, "High-Resolution Image Synthesis with
    Latent Diffusion Models", Sec. 3.3).

    ``context_mask [B, L]`` is a key padding mask: True marks real tokens, False padding, which no
    position attends to. A row with no real token gets no update (the block is the identity for that
    sample) instead of NaN. Without context the block is the identity. The embedding is not used.
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int) -> None:
        super().__init__(channels, num_heads)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)

    def forward(
        self, x: torch.Tensor, *, emb: torch.Tensor | None = None,
        context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x [B, C, H, W]``, ``context [B, L, D]``, ``context_mask`` bool ``[B, L]`` -> ``[B, C, H, W]``
        (``emb`` unused)."""
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

    A :class:`ConditionedBlock` (such as :class:`ResBlock` or :class:`CrossAttention`) gets the feature
    map, the embedding ``[B, E]`` and the text tokens and mask; every other block only the feature map.
    """

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x [B, C, H, W]``, ``emb [B, E]``, ``context [B, L, D]``, ``context_mask [B, L]`` -> ``[B, C', H', W']``."""
        for block in self:
            if isinstance(block, ConditionedBlock):
                x = block(x, emb=emb, context=context, context_mask=context_mask)
            else:
                x = block(x)
        return x
