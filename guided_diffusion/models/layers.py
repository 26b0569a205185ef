"""Building blocks shared by the UNet and the noise-aware classifier.

Every block takes feature maps ``[B, C, H, W]``. Blocks that need more than the feature map say so
by type: :class:`ResBlock` takes the conditioning embedding ``[B, E]`` and :class:`CrossAttention`
takes text tokens ``[B, L, D]`` with their mask ``[B, L]``. :class:`ConditionedSequential` chains
blocks and hands each one what it needs, so a model is a list of stages.

The blocks accept either memory layout and keep the one they are given; on CPU the UNet runs them
channels-last (``[B, H, W, C]`` in memory), where oneDNN's convolutions are fastest. GroupNorm, the
embedding's scale and shift, and SiLU run as one fused step (:func:`group_norm_act`) whose cost does
not depend on the layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


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


def _group_mean(values: torch.Tensor, groups: int, count: int) -> torch.Tensor:
    """Per-channel sums ``[B, C]`` -> each channel's group mean ``[B, C]`` (``count`` elements per group)."""
    b, c = values.shape
    if groups == c:
        return values / count
    return values.view(b, groups, -1).sum(2, keepdim=True).div_(count).expand(b, groups, c // groups).reshape(b, c)


def _as_map(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-channel ``[C]`` or per-sample ``[B, C]`` values as a view that broadcasts against ``like [B, C, ...]``."""
    return values.view(*values.shape, *(1,) * (like.dim() - 2))


def _group_norm_affine(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    groups: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``GroupNorm(x) * (1 + scale) + shift`` (plain ``GroupNorm(x)`` when ``scale`` is None).

    Statistics are taken in float32 (or ``x``'s wider dtype) in two passes: the mean, then the mean
    square of ``x - mean``. Returns ``(y, centered, rstd)``: ``y`` and ``centered = x - mean`` shaped
    and laid out like ``x``, and each channel's ``1 / sqrt(var + eps)`` ``[B, C]``.
    """
    flat = x.flatten(2)
    count = flat.shape[2] * (x.shape[1] // groups)
    dtype = torch.promote_types(x.dtype, torch.float32)
    centered = x - _as_map(_group_mean(flat.sum(2, dtype=dtype), groups, count), x)
    flat = centered.flatten(2)
    rstd = torch.rsqrt(_group_mean(torch.linalg.vecdot(flat, flat), groups, count) + eps)
    if scale is None:
        gain, offset = weight, bias
    else:
        gain, offset = weight * (1 + scale), torch.addcmul(shift, bias, 1 + scale)
    y = torch.addcmul(_as_map(offset, x), centered, _as_map(rstd * gain, x))
    return y, centered, rstd


class _GroupNormAct(torch.autograd.Function):
    """Autograd for :func:`group_norm_act`: the backward pass reads the saved ``x - mean`` and, with
    SiLU, the pre-activation, and forms every gradient from two reductions of the incoming gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, groups, eps, act):
        """The arguments of :func:`group_norm_act`, unpacked; returns its output."""
        y, centered, rstd = _group_norm_affine(x, weight, bias, scale, shift, groups, eps)
        ctx.groups = groups
        ctx.save_for_backward(centered, rstd, y if act else None, weight, bias, scale)
        return (F.silu(y) if act else y).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        """Gradients for ``x, weight, bias, scale, shift`` (None where not needed)."""
        centered, rstd, pre_act, weight, bias, scale = ctx.saved_tensors
        groups = ctx.groups
        grad_out = grad_out.to(centered.dtype)
        grad_y = grad_out if pre_act is None else torch.ops.aten.silu_backward(grad_out, pre_act)
        flat_grad = grad_y.flatten(2)
        count = flat_grad.shape[2] * (centered.shape[1] // groups)
        grad_sum = flat_grad.sum(2)  # sum of dL/dy over positions, [B, C]
        grad_dot = torch.linalg.vecdot(flat_grad, centered.flatten(2)) * rstd  # sum of dL/dy * x_hat, [B, C]
        film = None if scale is None else 1 + scale
        gain = weight if film is None else weight * film
        mean_grad = _group_mean(gain * grad_sum, groups, count)
        mean_grad_dot = _group_mean(gain * grad_dot, groups, count)
        # dL/dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)) with g = gain * dL/dy, per group.
        grad_x = torch.addcmul(
            _as_map(-rstd * mean_grad, centered), centered, _as_map(-rstd.square() * mean_grad_dot, centered)
        )
        grad_x.addcmul_(grad_y, _as_map(rstd * gain, centered))
        needs = ctx.needs_input_grad
        grad_weight = (grad_dot if film is None else grad_dot * film).sum(0) if needs[1] else None
        grad_bias = (grad_sum if film is None else grad_sum * film).sum(0) if needs[2] else None
        grad_scale = weight * grad_dot + bias * grad_sum if needs[3] else None
        grad_shift = grad_sum if needs[4] else None
        return grad_x, grad_weight, grad_bias, grad_scale, grad_shift, None, None, None


def group_norm_act(
    x: torch.Tensor,
    norm: nn.GroupNorm,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    act: bool = True,
) -> torch.Tensor:
    """``SiLU(norm(x) * (1 + scale) + shift)`` in one fused step.

    Args:
        x: feature map ``[B, C, ...]`` in any memory layout (the output keeps it).
        norm: an affine :class:`torch.nn.GroupNorm` over ``C`` channels (its parameters are used).
        scale, shift: per-sample modulation ``[B, C]``, both or neither.
        act: apply SiLU; without it the result is ``norm(x) * (1 + scale) + shift``.

    Returns:
        a tensor shaped, typed and laid out like ``x`` (computed in float32 when ``x`` is narrower).
    """
    inputs = (x, norm.weight, norm.bias, scale, shift)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _GroupNormAct.apply(*inputs, norm.num_groups, norm.eps, act)
    y = _group_norm_affine(*inputs, norm.num_groups, norm.eps)[0]
    return (F.silu(y, inplace=True) if act else y).to(x.dtype)


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
    The submodules keep this reading order (and the parameter names); ``forward`` fuses each
    normalisation with what follows it (:func:`group_norm_act`).
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
        norm, _, conv = self.in_layers
        h = conv(group_norm_act(x, norm))
        scale, shift = self.emb_layers(emb).to(h.dtype).chunk(2, dim=1)
        _, dropout, conv = self.out_layers
        return self.skip(x) + conv(dropout(group_norm_act(h, self.out_norm, scale, shift)))


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
