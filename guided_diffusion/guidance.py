"""Guidance: classifier-free guidance (a model wrapper) and classifier guidance (a ``cond_fn``).

Classifier-free guidance mixes the conditional and unconditional predictions,
``out = out(x, "") + w * (out(x, c) - out(x, ""))``, batching both in one forward: w = 1 is the plain
conditional model and w = 0 the unconditional one. The mix is linear in the model output, so it applies
to eps, x_0 and v predictions alike.

Classifier guidance (Dhariwal & Nichol 2021) adds the gradient of a noise-aware classifier's
log p(y | x_t, t) to the reverse step; :func:`classifier_cond_fn` builds that gradient function in the
form :class:`~guided_diffusion.diffusion.GaussianDiffusion` expects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

Model = Callable[..., torch.Tensor]


class ClassifierFreeGuidance:
    """Wraps ``model`` so that each call returns the guided output.

    Args:
        model: called as ``model(x_t, t, **kwargs)``.
        guidance_scale: w above.
        uncond_kwargs: the model kwargs of the unconditional input (e.g. the empty prompt's text
            features), with the same batch size and shapes as the conditional kwargs of each call.
    """

    def __init__(self, model: Model, guidance_scale: float, uncond_kwargs: Mapping[str, torch.Tensor]) -> None:
        self.model = model
        self.guidance_scale = float(guidance_scale)
        self.uncond_kwargs = dict(uncond_kwargs)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **cond_kwargs: torch.Tensor) -> torch.Tensor:
        """x_t [B, C, H, W], t [B] -> the guided output [B, C, H, W]."""
        if self.guidance_scale == 1.0:
            return self.model(x_t, t, **cond_kwargs)
        if self.guidance_scale == 0.0:
            return self.model(x_t, t, **self.uncond_kwargs)
        if set(cond_kwargs) != set(self.uncond_kwargs):
            raise ValueError(
                f"conditional kwargs {sorted(cond_kwargs)} and unconditional kwargs {sorted(self.uncond_kwargs)} differ"
            )
        both = {key: torch.cat([cond_kwargs[key], self.uncond_kwargs[key]]) for key in cond_kwargs}
        out = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), **both)
        cond, uncond = out.chunk(2)
        return uncond + self.guidance_scale * (cond - uncond)


def resolve_labels(
    class_names: Mapping[str, Sequence[str]], labels: Mapping[str, Any], batch_size: int, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """Turn ``labels`` (attribute -> class index, class name, or a [B] sequence/LongTensor of either)
    into attribute -> LongTensor [B]; unknown attributes or class names are refused with the valid ones."""
    resolved = {}
    for attribute, value in labels.items():
        if attribute not in class_names:
            raise ValueError(f"unknown classifier attribute {attribute!r}; valid attributes: {', '.join(class_names)}")
        names = list(class_names[attribute])
        values = value.tolist() if isinstance(value, torch.Tensor) else value
        if isinstance(values, (str, int)):
            values = [values] * batch_size
        if len(values) != batch_size:
            raise ValueError(f"labels for {attribute!r} hold {len(values)} entries, expected {batch_size}")
        indices = []
        for item in values:
            if isinstance(item, str):
                if item not in names:
                    raise ValueError(f"unknown {attribute} {item!r}; valid: {', '.join(names)}")
                indices.append(names.index(item))
            elif not 0 <= int(item) < len(names):
                raise ValueError(f"{attribute} index {item} out of range 0..{len(names) - 1}")
            else:
                indices.append(int(item))
        resolved[attribute] = torch.tensor(indices, dtype=torch.long, device=device)
    return resolved


def classifier_cond_fn(
    classifier: Callable[[torch.Tensor, torch.Tensor], Mapping[str, torch.Tensor]],
    labels: Mapping[str, torch.Tensor],
    scale: float,
    max_t: int | None = None,
) -> Callable[..., torch.Tensor]:
    """The classifier-guidance hook ``cond_fn(x_t, t, **model_kwargs) -> [B, C, H, W]``.

    ``classifier(x_t, t)`` returns attribute -> logits [B, K]; ``labels`` maps attribute -> LongTensor [B]
    (see :func:`resolve_labels`). The hook returns
    ``scale * grad_x sum_attributes log softmax(logits)[y]``, evaluated at x_t; ``t`` is on the original scale.
    With ``max_t``, rows whose t exceeds it get a zero gradient: guidance starts later in the trajectory,
    leaving the high-noise steps (where a classifier reads little but size and colour) unguided.
    """

    def cond_fn(x_t: torch.Tensor, t: torch.Tensor, **_: Any) -> torch.Tensor:
        if max_t is not None and not bool((t <= max_t).any()):
            return torch.zeros_like(x_t)  # no row is guided: skip the classifier's forward and backward
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            logits = classifier(x, t)
            log_prob = x.new_zeros(())
            for attribute, y in labels.items():
                log_probs = torch.log_softmax(logits[attribute].to(x.dtype), dim=-1)
                log_prob = log_prob + log_probs.gather(1, y.view(-1, 1).to(log_probs.device)).sum()
            (grad,) = torch.autograd.grad(log_prob, x)
        if max_t is not None:
            grad = grad * (t <= max_t).to(grad.dtype).view(-1, *[1] * (grad.ndim - 1))
        return scale * grad

    return cond_fn
