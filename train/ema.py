"""An exponential moving average (EMA) of a module's trainable weights.

After each optimizer update, ``shadow <- decay_n * shadow + (1 - decay_n) * weights``. With warm-up,
``decay_n = min(decay, (1 + n) / (10 + n))`` after ``n`` earlier updates, so early averages are not
dominated by the random initialisation. The shadow weights are kept in float32.

The warm-up is more than a start: ``(1 + n) / (10 + n) = 1 - 9 / (n + 10)`` is the power-function EMA of
Karras et al. 2024 (EDM2) with exponent 8, whose average weights the update at ``t`` by about
``t ** 8``: its length is about 9% of the run at every run length (the standard deviation of the
averaged updates' ages over the updates so far, EDM2's sigma_rel = 3 / (10 * 11 ** 0.5) = 0.0905).
``decay`` only caps it, from ``n = 9 / (1 - decay) - 10`` on (8,990 updates for 0.999), after which
the average has a fixed length of about ``decay ** 0.5 / (1 - decay)`` updates, as without warm-up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from guided_diffusion.models.layers import renamed_keys


class EMA:
    """The EMA of ``module``'s parameters that require gradients.

    Register it with ``accelerator.register_for_checkpointing`` to save it with the training state;
    use :meth:`applied` to evaluate or export with the averaged weights.
    """

    def __init__(self, module: nn.Module, *, decay: float = 0.9999, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.params = {name: p for name, p in module.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().to(torch.float32, copy=True) for name, p in self.params.items()}
        self.renames = renamed_keys(module)  # old weight names of the module's blocks -> today's

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights; call after each optimizer update."""
        weight = 1.0 - self.current_decay()
        shadows = list(self.shadow.values())
        torch._foreach_lerp_(shadows, [p.detach().to(torch.float32) for p in self.params.values()], weight)
        self.num_updates += 1

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Swap the averaged weights into the module for the block, then put the trained ones back."""
        trained = {name: p.detach().clone() for name, p in self.params.items()}
        self._copy_into_params(self.shadow)
        try:
            yield
        finally:
            self._copy_into_params(trained)

    @torch.no_grad()
    def _copy_into_params(self, values: dict[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            p.copy_(values[name])

    def state_dict(self) -> dict[str, Any]:
        return {"num_updates": self.num_updates, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a state saved by :meth:`state_dict`, also one saved under the blocks' old weight names."""
        shadow = {self.renames.get(name, name): tensor for name, tensor in state["shadow"].items()}
        missing = sorted(set(self.shadow) - set(shadow))
        if missing:
            raise ValueError(f"EMA state lacks weights {missing[:3]}; it belongs to another model")
        self.num_updates = int(state["num_updates"])
        for name, tensor in self.shadow.items():
            tensor.copy_(shadow[name])
