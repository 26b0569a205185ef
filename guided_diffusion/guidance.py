"""Guidance: classifier-free guidance and autoguidance (a model wrapper), classifier guidance (a
``cond_fn``), guidance intervals and condition annealing (CADS).

Classifier-free guidance mixes the conditional and unconditional predictions,
``out = out(x, "") + w * (out(x, c) - out(x, ""))``, batching both in one forward: w = 1 is the plain
conditional model and w = 0 the unconditional one. The mix is linear in the model output, so it applies
to eps, x_0 and v predictions alike. Autoguidance (Karras et al. 2024, "Guiding a diffusion model with
a bad version of itself") replaces the unconditional branch by a weaker model of the same kind (an
earlier checkpoint, or a smaller model trained by the same recipe) given the same prompt:
``out = weak(x, c) + w * (out(x, c) - weak(x, c))``.

Classifier guidance (Dhariwal & Nichol 2021) adds the gradient of a noise-aware classifier's
log p(y | x_t, t) to the reverse step; :func:`classifier_cond_fn` builds that gradient function in the
form :class:`~guided_diffusion.diffusion.GaussianDiffusion` expects. CLIP guidance (Nichol et al. 2022,
GLIDE) does the same with a noise-aware CLIP's image-text logit for any prompt, or with its log
softmax over the prompt and negative captions to steer away from (:func:`clip_cond_fn`).

A guidance interval (Kynkaenniemi et al. 2024, "Applying guidance in a limited interval improves sample
and distribution quality") is an inclusive range ``(t_low, t_high)`` of original-scale timesteps
(0..T-1, fractional ones included) in which a guidance acts; elsewhere classifier-free guidance gives the
plain conditional output (one forward instead of two) and classifier guidance no gradient.

CADS (Sadat et al. 2024, "CADS: unleashing the diversity of diffusion models through condition-annealed
sampling") adds Gaussian noise to the conditional text features at high noise levels, annealed away as
sampling proceeds, for diversity at high guidance scales (:class:`ConditionAnnealing`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import RequestError
from .noise import Generators, randn

Model = Callable[..., torch.Tensor]
Interval = tuple[float, float]


def check_interval(name: str, interval: Sequence[float] | None, num_timesteps: int) -> Interval | None:
    """``interval`` as a ``(t_low, t_high)`` tuple with 0 <= t_low <= t_high <= T - 1; None stays None;
    anything else is refused with a message naming ``name``."""
    if interval is None:
        return None
    if isinstance(interval, (str, bytes)) or len(interval) != 2:
        raise RequestError(f"{name} must be a pair (t_low, t_high) of timesteps in 0..{num_timesteps - 1}, got {interval!r}")
    low, high = (float(v) for v in interval)
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high <= num_timesteps - 1):
        raise RequestError(f"{name} must satisfy 0 <= t_low <= t_high <= {num_timesteps - 1}, got ({low:g}, {high:g})")
    return low, high


def in_interval(t: torch.Tensor, interval: Interval | None) -> torch.Tensor:
    """BoolTensor [B]: which rows of the original-scale timesteps ``t`` [B] lie in ``interval`` (all, for None)."""
    if interval is None:
        return torch.ones(t.shape, dtype=torch.bool, device=t.device)
    return (t >= interval[0]) & (t <= interval[1])


def _where_rows(mask: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *[1] * (inside.ndim - 1)), inside, outside)


class ClassifierFreeGuidance:
    """Wraps ``model`` so that each call returns the guided output.

    Args:
        model: called as ``model(x_t, t, **kwargs)``.
        guidance_scale: w above.
        uncond_kwargs: the kwargs of the guiding branch: the unconditional input (e.g. the empty
            prompt's text features) with the same batch size and shapes as the conditional kwargs of
            each call, or, with ``guide_model``, that model's own conditional kwargs.
        interval: the guidance interval (see the module); None guides at every timestep.
        guide_model: autoguidance's weaker model, called as ``guide_model(x_t, t, **uncond_kwargs)``
            in a forward of its own; None guides with ``model`` itself (classifier-free guidance).
    """

    def __init__(
        self,
        model: Model,
        guidance_scale: float,
        uncond_kwargs: Mapping[str, torch.Tensor],
        interval: Interval | None = None,
        guide_model: Model | None = None,
    ) -> None:
        self.model = model
        self.guidance_scale = float(guidance_scale)
        self.uncond_kwargs = dict(uncond_kwargs)
        self.interval = interval
        self.guide_model = guide_model

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **cond_kwargs: torch.Tensor) -> torch.Tensor:
        """x_t [B, C, H, W], t [B] -> the guided output [B, C', H, W] (C' = 2C for a learned variance, whose
        channels are the conditional model's)."""
        guided = in_interval(t, self.interval)
        if self.guidance_scale == 1.0 or not bool(guided.any()):
            return self.model(x_t, t, **cond_kwargs)
        if self.guide_model is not None:
            cond, uncond = self.model(x_t, t, **cond_kwargs), self.guide_model(x_t, t, **self.uncond_kwargs)
        elif self.guidance_scale == 0.0 and bool(guided.all()):
            return self.model(x_t, t, **self.uncond_kwargs)
        else:
            if set(cond_kwargs) != set(self.uncond_kwargs):
                raise RequestError(
                    f"conditional kwargs {sorted(cond_kwargs)} and unconditional kwargs {sorted(self.uncond_kwargs)} differ"
                )
            both = {key: torch.cat([cond_kwargs[key], self.uncond_kwargs[key]]) for key in cond_kwargs}
            cond, uncond = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), **both).chunk(2)
        channels = x_t.shape[1]  # beyond them, a learned variance: the conditional one, unmixed (GLIDE)
        mixed = uncond[:, :channels] + self.guidance_scale * (cond[:, :channels] - uncond[:, :channels])
        if cond.shape[1] > channels:
            mixed = torch.cat([mixed, cond[:, channels:]], dim=1)
        return _where_rows(guided, mixed, cond)


@dataclass(frozen=True)
class CADS:
    """The settings of condition-annealed sampling (Sadat et al. 2024), with the paper's defaults.

    With tau = t / (T - 1) the normalised timestep (1: pure noise), the condition y becomes
    ``sqrt(gamma) y + noise_scale sqrt(1 - gamma) n``, n ~ N(0, I), where gamma is 1 for tau <= tau1,
    0 for tau >= tau2 and linear between; the result is rescaled to y's mean and standard deviation and
    mixed with the unrescaled one as ``psi * rescaled + (1 - psi) * noised``.
    """

    tau1: float = 0.6
    tau2: float = 0.9
    noise_scale: float = 0.25
    psi: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.tau1 < self.tau2 <= 1:
            raise RequestError(f"CADS needs 0 <= tau1 < tau2 <= 1, got tau1={self.tau1:g}, tau2={self.tau2:g}")
        if not self.noise_scale >= 0 or not 0 <= self.psi <= 1:
            raise RequestError(f"CADS needs noise_scale >= 0 and psi in [0, 1], got {self.noise_scale:g} and {self.psi:g}")

    def gamma(self, tau: torch.Tensor) -> torch.Tensor:
        """gamma(tau) [B] for normalised timesteps ``tau`` [B]."""
        return ((self.tau2 - tau) / (self.tau2 - self.tau1)).clamp(0.0, 1.0)


class ConditionAnnealing:
    """Wraps a (guided) model and anneals its conditional ``text_features`` [B, L, D] by :class:`CADS`
    before each call; ``text_mask`` [B, L] picks the tokens whose statistics the rescaling keeps.

    ``num_timesteps`` is T of the original timesteps the model receives; ``generator`` (one, or one per
    image) draws the noise, so the same seed gives the same images.
    """

    def __init__(self, model: Model, cads: CADS, num_timesteps: int, generator: Generators = None) -> None:
        self.model = model
        self.cads = cads
        self.num_timesteps = num_timesteps
        self.generator = generator

    def anneal(self, features: torch.Tensor, mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The annealed features [B, L, D] at original-scale timesteps ``t`` [B]."""
        gamma = self.cads.gamma(t.to(torch.float64) / (self.num_timesteps - 1)).to(features.dtype).view(-1, 1, 1)
        if bool((gamma == 1).all()):
            return features  # below tau1 everywhere: the condition itself, and no noise drawn
        noise = randn(features.shape, self.generator, features.device, features.dtype)
        noised = gamma.sqrt() * features + self.cads.noise_scale * (1 - gamma).sqrt() * noise
        if self.cads.psi == 0:
            return noised
        weights = mask.to(features.dtype).unsqueeze(-1).expand_as(features)
        count = weights.sum(dim=(1, 2), keepdim=True).clamp(min=1)

        def stats(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mean = (y * weights).sum(dim=(1, 2), keepdim=True) / count
            std = (((y - mean) ** 2 * weights).sum(dim=(1, 2), keepdim=True) / count).sqrt()
            return mean, std

        (mean_in, std_in), (mean_out, std_out) = stats(features), stats(noised)
        rescaled = (noised - mean_out) / std_out.clamp(min=1e-12) * std_in + mean_in
        return self.cads.psi * rescaled + (1 - self.cads.psi) * noised

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **cond_kwargs: torch.Tensor) -> torch.Tensor:
        """x_t [B, C, H, W], t [B] -> the wrapped model's output with annealed text features."""
        annealed = self.anneal(cond_kwargs["text_features"], cond_kwargs["text_mask"], t)
        return self.model(x_t, t, **{**cond_kwargs, "text_features": annealed})


def resolve_labels(
    class_names: Mapping[str, Sequence[str]], labels: Mapping[str, Any], batch_size: int, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """Turn ``labels`` (attribute -> class index, class name, or a [B] sequence/LongTensor of either)
    into attribute -> LongTensor [B]; unknown attributes or class names are refused with the valid ones."""
    resolved = {}
    for attribute, value in labels.items():
        if attribute not in class_names:
            raise RequestError(f"unknown classifier attribute {attribute!r}; valid attributes: {', '.join(class_names)}")
        names = list(class_names[attribute])
        values = value.tolist() if isinstance(value, torch.Tensor) else value
        if isinstance(values, (str, int)):
            values = [values] * batch_size
        if len(values) != batch_size:
            raise RequestError(f"labels for {attribute!r} hold {len(values)} entries, expected {batch_size}")
        indices = []
        for item in values:
            if isinstance(item, str):
                if item not in names:
                    raise RequestError(f"unknown {attribute} {item!r}; valid: {', '.join(names)}")
                indices.append(names.index(item))
            elif not 0 <= int(item) < len(names):
                raise RequestError(f"{attribute} index {item} out of range 0..{len(names) - 1}")
            else:
                indices.append(int(item))
        resolved[attribute] = torch.tensor(indices, dtype=torch.long, device=device)
    return resolved


Denoiser = Callable[..., torch.Tensor]  # (x_t, t, **model_kwargs) -> the model's x_0 estimate, differentiable


@dataclass(frozen=True)
class ModelEstimate:
    """The :data:`Denoiser` of a sampler's own model: ``(x_t, t, **model_kwargs) ->`` ``diffusion``'s x_0
    estimate [B, C, H, W] from ``model``'s output (:meth:`~guided_diffusion.diffusion.GaussianDiffusion.estimate_x0`).

    A guidance hook that reads it lets :meth:`~guided_diffusion.diffusion.GaussianDiffusion.denoise`,
    called with that same ``model``, evaluate the model once per guided step, with a graph, and hand
    the output to the hook (:meth:`GuidanceHook.from_model_output`), instead of once for the step
    and once more inside the hook: the same numbers, one forward fewer."""

    diffusion: Any  # GaussianDiffusion
    model: Model

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        return self.diffusion.estimate_x0(self.model, x_t, t, model_kwargs)


class GuidanceHook:
    """The guidance hook ``cond_fn(x_t, t, **model_kwargs) -> scale * grad_x objective(x, t)`` [B, C, H, W],
    ``objective`` a scalar summed over the batch; rows outside ``interval`` get a zero gradient, and a
    batch with none inside skips the objective's forward and backward. With ``denoiser`` the objective
    reads the denoised estimate instead, ``objective(denoiser(x_t, t, **model_kwargs), 0)``, and the
    gradient with respect to x_t goes through the denoiser (see :func:`classifier_cond_fn`)."""

    def __init__(
        self,
        objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        scale: float,
        interval: Interval | None,
        denoiser: Denoiser | None = None,
    ) -> None:
        self.objective, self.scale, self.interval, self.denoiser = objective, scale, interval, denoiser

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        guided = in_interval(t, self.interval)
        if not bool(guided.any()):
            return torch.zeros_like(x_t)
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            read = x if self.denoiser is None else self.denoiser(x, t, **model_kwargs)
            (grad,) = torch.autograd.grad(self._value(read, t), x)
        return self.scale * _where_rows(guided, grad, torch.zeros_like(grad))

    def reads_output_of(self, model: Model, t: torch.Tensor) -> bool:
        """Whether the hook reads ``model``'s x_0 estimate (a :class:`ModelEstimate` of it) at some row of ``t`` [B]."""
        estimate = self.denoiser
        return isinstance(estimate, ModelEstimate) and estimate.model is model and bool(in_interval(t, self.interval).any())

    def from_model_output(self, x: torch.Tensor, output: torch.Tensor, t: torch.Tensor, model: Model, **model_kwargs: Any) -> torch.Tensor:
        """The hook's value at x_t = ``x`` [B, C, H, W] (a tensor that requires grad) given ``output``,
        ``model(x, t, **model_kwargs)`` computed with its graph: a hook that reads ``model``'s estimate
        (:meth:`reads_output_of`) forms it from ``output``, any other hook is called as usual. The
        graph is kept for the next hook."""
        if not self.reads_output_of(model, t):
            return self(x.detach(), t, **model_kwargs)
        guided = in_interval(t, self.interval)
        read = self.denoiser.diffusion.x0_of_output(output, x, t)
        (grad,) = torch.autograd.grad(self._value(read, t), x, retain_graph=True)
        return self.scale * _where_rows(guided, grad, torch.zeros_like(grad))

    def _value(self, read: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.objective(read, t if self.denoiser is None else torch.zeros_like(t))


class GuidanceSum:
    """One guidance hook adding up the gradients of ``hooks`` (:class:`GuidanceHook` or plain
    ``cond_fn(x_t, t, **model_kwargs)`` functions), sharing one model forward among those that read
    the sampler's model (see :class:`ModelEstimate`)."""

    def __init__(self, hooks: Sequence[Callable[..., torch.Tensor]]) -> None:
        self.hooks = list(hooks)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        return sum(hook(x_t, t, **model_kwargs) for hook in self.hooks)

    def reads_output_of(self, model: Model, t: torch.Tensor) -> bool:
        return any(reads_output_of(hook, model, t) for hook in self.hooks)

    def from_model_output(self, x: torch.Tensor, output: torch.Tensor, t: torch.Tensor, model: Model, **model_kwargs: Any) -> torch.Tensor:
        return sum(
            hook.from_model_output(x, output, t, model, **model_kwargs) if hasattr(hook, "from_model_output") else hook(x.detach(), t, **model_kwargs)
            for hook in self.hooks
        )


def reads_output_of(cond_fn: Callable[..., torch.Tensor], model: Model, t: torch.Tensor) -> bool:
    """Whether guidance hook ``cond_fn`` reads ``model``'s x_0 estimate at some row of ``t`` [B], so that
    the caller may evaluate ``model`` once with a graph and call ``cond_fn.from_model_output``."""
    check = getattr(cond_fn, "reads_output_of", None)
    return bool(check is not None and check(model, t))


def classifier_cond_fn(
    classifier: Callable[[torch.Tensor, torch.Tensor], Mapping[str, torch.Tensor]],
    labels: Mapping[str, Any],
    scale: float,
    max_t: int | None = None,
    interval: Interval | None = None,
    denoiser: Denoiser | None = None,
) -> GuidanceHook:
    """The classifier-guidance hook ``cond_fn(x_t, t, **model_kwargs) -> [B, C, H, W]``.

    ``classifier(x_t, t)`` returns attribute -> logits [B, K]; ``labels`` maps attribute -> LongTensor [B],
    or, for a classifier with ``labels`` (attribute -> class names), a class name or index or a sequence
    of them (see :func:`resolve_labels`; resolved once per batch size). The hook returns
    ``scale * grad_x sum_attributes log softmax(logits)[y]``, evaluated at x_t; ``t`` is on the original scale.
    Rows whose t is outside ``interval`` (see the module), or above ``max_t`` (the interval (0, max_t)),
    get a zero gradient: guidance starting later in the trajectory leaves the high-noise steps (where a
    classifier reads little but size and colour) unguided.

    With ``denoiser`` (``(x_t, t, **model_kwargs) -> x_0 estimate``, such as a :class:`ModelEstimate`
    of the sampler's model) the classifier reads the model's x_0 estimate as a clean image (at t = 0)
    instead of x_t at t, and the gradient reaches x_t through the model: ``scale * grad_{x_t} log p(y |
    x0_hat(x_t), 0)``, the forward guidance of Bansal et al. 2023 ("Universal guidance for diffusion
    models"). At high noise, where the classifier reads x_t near chance, x0_hat already shows the
    outline the sampler is heading for, and the gradient steers it; each guided step costs a backward
    of the model more (and a forward more, unless the denoiser is a :class:`ModelEstimate` of the
    model the sampler calls, whose forward it then shares).
    """
    if max_t is not None:
        if interval is not None:
            raise RequestError("give either max_t or interval, not both (max_t is the interval (0, max_t))")
        interval = (0.0, float(max_t))
    resolved: dict[tuple[int, torch.device], dict[str, torch.Tensor]] = {}

    def targets(x: torch.Tensor) -> dict[str, torch.Tensor]:
        key = (x.shape[0], x.device)
        if key not in resolved:
            given = {a: y for a, y in labels.items() if isinstance(y, torch.Tensor) and y.ndim == 1}
            named = {a: y for a, y in labels.items() if a not in given}
            resolved[key] = {**given, **(resolve_labels(classifier.labels, named, x.shape[0], x.device) if named else {})}
        return resolved[key]

    def log_probability(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = classifier(x, t)
        total = x.new_zeros(())
        for attribute, y in targets(x).items():
            log_probs = torch.log_softmax(logits[attribute].to(x.dtype), dim=-1)
            total = total + log_probs.gather(1, y.view(-1, 1).to(log_probs.device)).sum()
        return total

    return GuidanceHook(log_probability, scale, interval, denoiser)


def clip_cond_fn(
    clip: Any,
    prompts: Sequence[str],
    scale: float,
    interval: Interval | None = None,
    negatives: Sequence[str] | None = None,
    denoiser: Denoiser | None = None,
) -> GuidanceHook:
    """The CLIP-guidance hook ``cond_fn(x_t, t, **model_kwargs) -> [B, C, H, W]`` for a noise-aware CLIP
    (:class:`~guided_diffusion.models.clip.NoiseAwareCLIP`) and one prompt per image.

    Each caption's logit is the CLIP's temperature times the cosine similarity of the image embedding
    of (x_t, t) and the caption's text embedding: the quantity the contrastive loss trains as a
    log-odds, so scales compare with classifier guidance's. Without ``negatives`` the hook returns
    ``scale * grad_x logit(x_t, t, prompt)`` (GLIDE). With ``negatives`` (captions to steer away from,
    the same for every image) it returns ``scale * grad_x log softmax([logit(prompt), logit(n_1), ...])[0]``:
    the CLIP read as a zero-shot classifier over the prompt and the negatives, whose gradient is the
    prompt's minus the softmax-weighted mean of all candidates' (what tells the prompt apart from
    the negatives, not what they share). The negatives are a set (a repeated one counts once), and a
    negative equal to an image's prompt is left out for that image, so ``negatives`` may list every
    class of a zero-shot classifier.
    The text embeddings are computed once. Rows whose t is outside ``interval`` get a zero gradient.
    ``denoiser`` makes the CLIP read the model's x_0 estimate at t = 0, as for :func:`classifier_cond_fn`.
    """
    prompts = list(prompts)
    negatives = list(dict.fromkeys(negatives or ()))
    with torch.no_grad():
        text = clip.encode_text(prompts)  # [B, E]
        temperature = clip.scale()
        if negatives:
            away = clip.encode_text(negatives)  # [K, E]
            own_caption = torch.tensor([[p == n for n in negatives] for p in prompts])  # [B, K]

    def objective(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != text.shape[0]:
            raise RequestError(f"CLIP guidance has {text.shape[0]} prompts for a batch of {x.shape[0]} images")
        image = clip.encode_image(x, t)  # [B, E]
        logit_scale = temperature.to(image.dtype)
        own = logit_scale * (image * text.to(image.dtype)).sum(dim=-1)  # [B]
        if not negatives:
            return own.sum()
        others = (logit_scale * image @ away.to(image.dtype).T).masked_fill(own_caption.to(image.device), float("-inf"))  # [B, K]
        return torch.log_softmax(torch.cat([own[:, None], others], dim=1), dim=1)[:, 0].sum()

    return GuidanceHook(objective, scale, interval, denoiser)
