"""A hand-written autograd op: GroupNorm, a per-sample scale and shift, and SiLU as one fused step.

:func:`group_norm_act` computes ``SiLU(GroupNorm(x) * (1 + scale) + shift)``: group normalisation
(Wu & He 2018, "Group Normalization", Eqs. 1-3: ``x_hat = (x - mu) / sqrt(sigma^2 + eps)`` over each
group of channels, then the per-channel affine ``gamma * x_hat + beta``), the adaptive scale and shift
of an embedding (AdaGN, Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis",
Sec. 3.1), and the sigmoid-weighted linear unit ``SiLU(y) = y * sigmoid(y)`` (Elfwing, Uchibe & Doya
2018; Hendrycks & Gimpel 2016). The blocks in :mod:`guided_diffusion.models.layers` call it.

Its cost does not depend on the memory layout: the statistics are two reductions over each channel's
positions, so a channels-last ``x`` (``[B, H, W, C]`` in memory, where oneDNN's CPU convolutions are
fastest) stays channels-last. With gradients needed it runs as :class:`_GroupNormAct`, whose backward
pass forms every gradient from two reductions of the incoming gradient (the normalisation's backward of
Ioffe & Szegedy 2015, "Batch Normalization", Sec. 3, taken per group) instead of replaying the
unfused graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


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
