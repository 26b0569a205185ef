"""``GuidedDiffusionPipeline``: a text-conditioned diffusion model ready to sample, save and load.

A saved pipeline is a folder::

    pipeline.json          format, diffusion and sampling settings, the component folders, and
                           example prompts (what the model draws well, for demos and users)
    unet/                  config.json + model.safetensors
    text_encoder/          config.json + model.safetensors (plus tokenizer files for transformers)
    classifier/            config.json + model.safetensors, when the pipeline has a noise-aware classifier

Nothing is unpickled on load, and a missing or corrupt file is refused by name. ``from_pretrained``
also takes the name of a model shipped inside the package (``guided_diffusion/pretrained/<name>``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn

from .compilation import check_compile_backend
from .diffusion import GaussianDiffusion
from .guidance import (
    CADS,
    ClassifierFreeGuidance,
    ConditionAnnealing,
    check_interval,
    classifier_cond_fn,
    clip_cond_fn,
    resolve_labels,
)
from .models.classifier import NoiseAwareClassifier
from .models.clip import NoiseAwareCLIP
from .models.unet import UNet, UNetConfig
from .samplers import sample, sampler_options
from .serialization import CheckpointError, load_json, save_json
from .text import TextEncoder, build_text_encoder, load_text_encoder

PIPELINE_FORMAT = "guided-diffusion-pipeline"
PIPELINE_INDEX = "pipeline.json"
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
SAMPLING_DEFAULTS: dict[str, Any] = {
    "sampler": "ddim",
    "steps": 50,
    "timestep_schedule": "uniform",
    "guidance_scale": 3.0,
    "eta": None,
    "clip_guidance_scale": 0.0,
}
CONFIG_SECTIONS = ("unet", "text_encoder", "diffusion", "sampling")
INDEX_KEYS = ("format", "format_version", "unet", "text_encoder", "classifier", "clip", "diffusion", "sampling", "example_prompts")
OUTPUT_TYPES = ("pil", "pt", "np")

Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def shipped_models() -> list[str]:
    """Names of the pipelines shipped inside the package."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / PIPELINE_INDEX).is_file())


def resolve_pipeline_folder(name_or_path: str | os.PathLike) -> Path:
    """The folder :meth:`GuidedDiffusionPipeline.from_pretrained` reads: ``name_or_path`` itself when it
    holds a pipeline, else the shipped model of that name; refused when neither exists."""
    directory = Path(name_or_path)
    shipped = PRETRAINED_DIR / str(name_or_path)
    if not (directory / PIPELINE_INDEX).is_file() and (shipped / PIPELINE_INDEX).is_file():
        return shipped
    if not directory.is_dir():
        raise CheckpointError(f"no pipeline folder {str(name_or_path)!r} (shipped models: {', '.join(shipped_models()) or 'none'})")
    return directory


def load_config(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A YAML config file (or an already-parsed dict) as a dict; a bad file is refused by name."""
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict)
    path = Path(path_or_dict)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections")
    return config


def _checked_sampling(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(config) - set(SAMPLING_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown sampling config keys {unknown}; valid keys: {', '.join(SAMPLING_DEFAULTS)}")
    return {**SAMPLING_DEFAULTS, **config}


def _summed(cond_fns: list[Callable[..., torch.Tensor]]) -> Callable[..., torch.Tensor] | None:
    """One guidance hook adding up the gradients of ``cond_fns`` (None for none; the one for one)."""
    if len(cond_fns) < 2:
        return cond_fns[0] if cond_fns else None
    return lambda x_t, t, **kwargs: sum(fn(x_t, t, **kwargs) for fn in cond_fns)


def _checked_prompts(prompts: Sequence[str]) -> list[str]:
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"example_prompts must be a list of strings, got {prompts!r}")
    return list(prompts)


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Put modules in eval mode for the block, restoring each one's mode afterwards."""
    present = [m for m in modules if m is not None]
    modes = [m.training for m in present]
    for m in present:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(present, modes):
            m.train(mode)


class GuidedDiffusionPipeline:
    """A UNet, its text encoder, the diffusion process and, optionally, a noise-aware classifier and a
    noise-aware CLIP (:class:`~guided_diffusion.models.clip.NoiseAwareCLIP`) to guide with.

    Build one fresh with :meth:`from_config`, load one with :meth:`from_pretrained`, and call it with
    prompts to get images. ``example_prompts`` are prompts the model draws well (the demo offers them);
    they are saved and loaded with the pipeline.
    """

    def __init__(
        self,
        unet: UNet,
        text_encoder: TextEncoder,
        diffusion_config: Mapping[str, Any],
        sampling_config: Mapping[str, Any] | None = None,
        classifier: NoiseAwareClassifier | None = None,
        example_prompts: Sequence[str] = (),
        clip: NoiseAwareCLIP | None = None,
    ) -> None:
        if unet.config.text_dim != text_encoder.width:
            raise ValueError(
                f"unet.text_dim ({unet.config.text_dim}) must equal the text encoder width ({text_encoder.width})"
            )
        self.unet = unet
        self.text_encoder = text_encoder
        self.diffusion_config = dict(diffusion_config)
        self.diffusion = GaussianDiffusion.from_config(self.diffusion_config)
        self.sampling_config = _checked_sampling(sampling_config or {})
        self.classifier = classifier
        self.clip = clip
        self.example_prompts = _checked_prompts(example_prompts)
        self.folder: Path | None = None

    # ------------------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, path_or_dict: str | os.PathLike | Mapping[str, Any]) -> "GuidedDiffusionPipeline":
        """Fresh, randomly initialised components from a YAML config (sections ``unet``,
        ``text_encoder``, ``diffusion``, ``sampling``; other sections such as ``data`` are ignored).
        ``unet.text_dim`` defaults to the text encoder's width."""
        config = load_config(path_or_dict)
        missing = [s for s in ("unet", "text_encoder") if s not in config]
        if missing:
            raise ValueError(f"config has no {' or '.join(missing)} section; sections found: {', '.join(config) or 'none'}")
        text_encoder = build_text_encoder(config["text_encoder"])
        unet = UNet(UNetConfig.from_dict({"text_dim": text_encoder.width, **config["unet"]}))
        return cls(unet, text_encoder, config.get("diffusion") or {}, config.get("sampling") or {})

    @property
    def config(self) -> dict[str, Any]:
        """The full configuration, in the layout :meth:`from_config` reads (plus ``classifier`` and
        ``clip`` when the pipeline has them)."""
        config = {
            "unet": self.unet.config.to_dict(),
            "text_encoder": dict(self.text_encoder.config),
            "diffusion": dict(self.diffusion_config),
            "sampling": dict(self.sampling_config),
        }
        if self.classifier is not None:
            config["classifier"] = self.classifier.config.to_dict()
        if self.clip is not None:
            config["clip"] = self.clip.config.to_dict()
        return config

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device: str | torch.device | None = None) -> "GuidedDiffusionPipeline":
        """Load a pipeline folder written by :meth:`save_pretrained`, or a shipped model by name.
        The folder it came from is kept as ``pipe.folder`` (``None`` for pipelines built in memory)."""
        directory = resolve_pipeline_folder(name_or_path)
        index = load_json(directory / PIPELINE_INDEX)
        if index.get("format") != PIPELINE_FORMAT:
            raise CheckpointError(f"{directory / PIPELINE_INDEX} is not a {PIPELINE_FORMAT} index")
        unknown = sorted(set(index) - set(INDEX_KEYS))
        if unknown:
            raise CheckpointError(f"{directory / PIPELINE_INDEX} has unknown entries {unknown}; valid entries: {', '.join(INDEX_KEYS)}")
        try:
            pipe = cls(
                UNet.from_pretrained(directory / index["unet"]),
                load_text_encoder(directory / index["text_encoder"]),
                index.get("diffusion", {}),
                index.get("sampling", {}),
                NoiseAwareClassifier.from_pretrained(directory / index["classifier"]) if index.get("classifier") else None,
                index.get("example_prompts", []),
                NoiseAwareCLIP.from_pretrained(directory / index["clip"]) if index.get("clip") else None,
            )
        except KeyError as err:
            raise CheckpointError(f"{directory / PIPELINE_INDEX} lacks the entry {err}") from None
        except ValueError as err:
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(f"bad pipeline in {directory}: {err}") from None
        for module in (pipe.unet, pipe.classifier, pipe.clip):
            if module is not None:
                module.eval()
        pipe.folder = directory
        return pipe.to(device) if device is not None else pipe

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the pipeline folder. The index is removed first and written last, so a write that is
        interrupted leaves a folder that :meth:`from_pretrained` refuses (missing ``pipeline.json``)
        rather than one that mixes old and new components."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / PIPELINE_INDEX).unlink(missing_ok=True)
        self.unet.save_pretrained(directory / "unet")
        self.text_encoder.save_pretrained(directory / "text_encoder")
        if self.classifier is not None:
            self.classifier.save_pretrained(directory / "classifier")
        if self.clip is not None:
            self.clip.save_pretrained(directory / "clip")
        save_json(
            directory / PIPELINE_INDEX,
            {
                "format": PIPELINE_FORMAT,
                "format_version": 1,
                "unet": "unet",
                "text_encoder": "text_encoder",
                "classifier": "classifier" if self.classifier is not None else None,
                "clip": "clip" if self.clip is not None else None,
                "diffusion": self.diffusion_config,
                "sampling": self.sampling_config,
                "example_prompts": self.example_prompts,
            },
        )

    def to(self, device: str | torch.device) -> "GuidedDiffusionPipeline":
        """Move every component to ``device``; returns self."""
        for module in (self.unet, self.text_encoder, self.classifier, self.clip):
            if module is not None:
                module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def compile(self, *, backend: str = "inductor", mode: str | None = None) -> "GuidedDiffusionPipeline":
        """Compile the UNet in place with ``torch.compile`` (``backend``, ``mode``); returns self.

        The UNet stays the same module with the same weights and state-dict keys (``nn.Module.compile``
        compiles its call, not a wrapper), so saving and loading are unchanged. Compiling happens in the
        first call (``compile_time_report`` in :mod:`guided_diffusion.compilation` estimates its cost);
        later calls reuse the result, and the first one with another batch size compiles once more,
        for any size.
        """
        check_compile_backend(backend)
        self.unet.compile(backend=backend, mode=mode)
        return self

    def parameter_counts(self) -> dict[str, int]:
        """Number of parameters of each component."""
        counts = {"unet": self.unet.num_parameters, "text_encoder": sum(p.numel() for p in self.text_encoder.parameters())}
        if self.classifier is not None:
            counts["classifier"] = sum(p.numel() for p in self.classifier.parameters())
        return counts

    # ------------------------------------------------------------------------------ sampling

    def __call__(
        self,
        prompt: str | list[str],
        *,
        num_images_per_prompt: int = 1,
        steps: int | None = None,
        sampler: str | None = None,
        timestep_schedule: str | None = None,
        eta: float | None = None,
        guidance_scale: float | None = None,
        classifier_scale: float = 0.0,
        classifier_labels: Mapping[str, Any] | None = None,
        classifier_max_t: int | None = None,
        classifier_interval: Sequence[float] | None = None,
        guidance_interval: Sequence[float] | None = None,
        autoguidance: "GuidedDiffusionPipeline | None" = None,
        cads: CADS | bool | Mapping[str, float] | None = None,
        clip_guidance_scale: float | None = None,
        clip_guidance_prompt: str | list[str] | None = None,
        clip_guidance_interval: Sequence[float] | None = None,
        thresholding: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        callback: Callback | None = None,
        output_type: str = "pil",
        progress: bool = False,
    ) -> list[Image.Image] | torch.Tensor | np.ndarray:
        """Sample ``num_images_per_prompt`` images for each prompt (prompt-major order).

        ``steps``, ``sampler``, ``timestep_schedule``, ``eta`` and ``guidance_scale`` default to the
        pipeline's sampling config (see :data:`~guided_diffusion.samplers.SAMPLERS` and
        :data:`~guided_diffusion.samplers.TIMESTEP_SCHEDULES`); ``eta`` goes to the samplers that take it
        (``ddim``, ``dpm++2m-sde``; None in the config: each sampler's default), and is refused by the
        others when given here. ``thresholding`` (a
        quantile such as 0.995) turns on dynamic thresholding of x_0, for high guidance scales.
        ``guidance_scale`` is classifier-free (1 plain conditional, 0 unconditional); ``classifier_scale``
        > 0 steers towards ``classifier_labels`` (attribute -> class name or index) with the classifier,
        at every step or, with ``classifier_max_t``, only at timesteps t <= it (0..T-1).
        ``guidance_interval`` and ``classifier_interval`` (``(t_low, t_high)``, original timesteps
        0..T-1, inclusive) limit classifier-free and classifier guidance to those timesteps (Kynkaenniemi
        et al. 2024); outside, the model is plain conditional and unguided by the classifier.
        ``autoguidance`` (a weaker pipeline of the same kind: an earlier checkpoint, or a smaller model
        trained by the same config) replaces the unconditional branch by that model given the same
        prompts, mixed with ``guidance_scale`` (Karras et al. 2024). ``cads`` (True for the paper's
        settings, or a :class:`~guided_diffusion.guidance.CADS` or a dict of its fields) anneals noise
        into the text features at high noise levels, for diversity at high guidance scales.
        ``clip_guidance_scale`` > 0 (None: the sampling config's, 0 unless the model records one) steers
        each image towards ``clip_guidance_prompt`` (one prompt, or one per prompt; default: the
        prompts themselves) with the pipeline's noise-aware CLIP (GLIDE's CLIP guidance), within
        ``clip_guidance_interval`` when given; it works with the empty prompt too.
        ``seed`` (or ``generator``) makes the result reproducible on the same device; ``generator`` may
        also be a list with one generator per image (prompt-major), where consecutive images that share
        one generator draw their noise together, as that generator alone would for them. ``callback(step,
        num_steps, x_t, pred_x0)`` sees each step's tensors [N, C, H, W] in [-1, 1].
        Returns a list of PIL images, a tensor [N, 3, H, W] in [0, 1] (``"pt"``), or uint8 [N, H, W, 3] (``"np"``).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}")
        settings = self.sampling_config
        sampler = settings["sampler"] if sampler is None else sampler
        timestep_schedule = settings["timestep_schedule"] if timestep_schedule is None else timestep_schedule
        steps = int(settings["steps"] if steps is None else steps)
        options = {}
        if eta is not None:
            options["eta"] = float(eta)
        elif settings["eta"] is not None and "eta" in sampler_options(sampler):
            options["eta"] = float(settings["eta"])
        guidance_scale = float(settings["guidance_scale"] if guidance_scale is None else guidance_scale)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        device = self.device
        if generator is None and seed is not None:
            generator = torch.Generator(device=device).manual_seed(int(seed))

        num_timesteps = self.diffusion.num_timesteps
        guidance_interval = check_interval("guidance_interval", guidance_interval, num_timesteps)
        if classifier_max_t is not None:
            if not 0 <= classifier_max_t < num_timesteps:
                raise ValueError(f"classifier_max_t must be between 0 and {num_timesteps - 1}, got {classifier_max_t}")
            if classifier_interval is not None:
                raise ValueError("give classifier_max_t or classifier_interval, not both (classifier_max_t is the interval (0, max_t))")
            classifier_interval = (0, classifier_max_t)
        classifier_interval = check_interval("classifier_interval", classifier_interval, num_timesteps)
        cads = self._checked_cads(cads)
        self._check_autoguidance(autoguidance)
        guides = [autoguidance.unet, autoguidance.text_encoder] if autoguidance is not None else []

        with _eval_mode(self.unet, self.text_encoder, self.classifier, self.clip, *guides), torch.no_grad():
            features, mask = self.text_encoder.encode(prompts)
            model_kwargs = {"text_features": features, "text_mask": mask}
            model: Callable[..., torch.Tensor] = self.unet
            if autoguidance is not None and guidance_scale != 1.0:
                weak_features, weak_mask = autoguidance.text_encoder.encode(prompts)
                weak = {"text_features": weak_features, "text_mask": weak_mask}
                model = ClassifierFreeGuidance(self.unet, guidance_scale, weak, guidance_interval, guide_model=autoguidance.unet)
            elif guidance_scale != 1.0 and any(prompts):  # all empty: cond == uncond, the mix changes nothing
                empty_features, empty_mask = self.text_encoder.encode([""])
                uncond = {
                    "text_features": empty_features.expand_as(features),
                    "text_mask": empty_mask.expand_as(mask),
                }
                model = ClassifierFreeGuidance(self.unet, guidance_scale, uncond, guidance_interval)
            if cads is not None:
                model = ConditionAnnealing(model, cads, num_timesteps, generator)
            cond_fns = [
                self._classifier_cond_fn(classifier_scale, classifier_labels, classifier_interval, len(prompts), device),
                self._clip_cond_fn(clip_guidance_scale, clip_guidance_prompt, clip_guidance_interval, prompts, num_images_per_prompt),
            ]
            cond_fn = _summed([fn for fn in cond_fns if fn is not None])
            config = self.unet.config
            x = sample(
                model,
                self.diffusion,
                (len(prompts), config.out_channels, config.image_size, config.image_size),
                sampler=sampler,
                steps=steps,
                timestep_schedule=timestep_schedule,
                model_kwargs=model_kwargs,
                cond_fn=cond_fn,
                thresholding=thresholding,
                generator=generator,
                device=device,
                dtype=next(self.unet.parameters()).dtype,
                callback=callback,
                progress=progress,
                **options,
            )
        images = ((x.float() + 1) / 2).clamp(0, 1).cpu()
        if output_type == "pt":
            return images
        array = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return array
        return [Image.fromarray(a) for a in array]

    def _clip_cond_fn(
        self,
        scale: float | None,
        guidance_prompt: str | list[str] | None,
        interval: Sequence[float] | None,
        prompts: list[str],
        per_prompt: int,
    ) -> Callable[..., torch.Tensor] | None:
        scale = float(self.sampling_config["clip_guidance_scale"] if scale is None else scale)
        interval = check_interval("clip_guidance_interval", interval, self.diffusion.num_timesteps)
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"clip_guidance_scale must be a number >= 0, got {scale}")
        if not scale:
            return None
        if self.clip is None:
            raise ValueError("clip_guidance_scale needs a pipeline with a noise-aware CLIP (pipe.clip); this one has none")
        if guidance_prompt is None:
            targets = prompts
        elif isinstance(guidance_prompt, str):
            targets = [guidance_prompt] * len(prompts)
        elif isinstance(guidance_prompt, list) and all(isinstance(p, str) for p in guidance_prompt) and len(guidance_prompt) * per_prompt == len(prompts):
            targets = [p for p in guidance_prompt for _ in range(per_prompt)]
        else:
            raise ValueError(f"clip_guidance_prompt must be a string or a list with one string per prompt ({len(prompts) // per_prompt}), got {guidance_prompt!r}")
        return clip_cond_fn(self.clip, targets, scale, interval)

    def _checked_cads(self, cads: CADS | bool | Mapping[str, float] | None) -> CADS | None:
        if cads is None or cads is False:
            return None
        if cads is True:
            return CADS()
        if isinstance(cads, CADS):
            return cads
        if isinstance(cads, Mapping):
            unknown = sorted(set(cads) - {f.name for f in dataclasses.fields(CADS)})
            if unknown:
                raise ValueError(f"unknown CADS setting {unknown[0]!r}; valid: {', '.join(f.name for f in dataclasses.fields(CADS))}")
            return CADS(**cads)
        raise ValueError(f"cads must be True, a CADS or a dict of its settings, got {cads!r}")

    def _check_autoguidance(self, weak: "GuidedDiffusionPipeline | None") -> None:
        """Refuse a guiding pipeline whose predictions cannot be mixed with this one's."""
        if weak is None:
            return
        if not isinstance(weak, GuidedDiffusionPipeline):
            raise ValueError(f"autoguidance must be a GuidedDiffusionPipeline (a weaker model of the same kind), got {type(weak).__name__}")
        ours, theirs = self.diffusion_config, weak.diffusion_config
        for key in ("num_timesteps", "prediction"):
            if ours.get(key) != theirs.get(key):
                raise ValueError(f"autoguidance needs a model with the same diffusion {key}: this one has {ours.get(key)!r}, the guide {theirs.get(key)!r}")
        if (weak.unet.config.image_size, weak.unet.config.out_channels) != (self.unet.config.image_size, self.unet.config.out_channels):
            raise ValueError("autoguidance needs a model of the same image size and channels as this one")
        if weak.device != self.device:
            raise ValueError(f"autoguidance's model is on {weak.device}, this one on {self.device}: move it with .to()")

    def _classifier_cond_fn(
        self,
        scale: float,
        labels: Mapping[str, Any] | None,
        interval: tuple[float, float] | None,
        batch_size: int,
        device: torch.device,
    ) -> Callable[..., torch.Tensor] | None:
        if not scale:
            return None
        if self.classifier is None:
            raise ValueError("classifier_scale needs a pipeline with a classifier; this one has none")
        if not labels:
            names = {attr: list(classes) for attr, classes in self.classifier.labels.items()}
            raise ValueError(f"classifier_scale needs classifier_labels, e.g. one of {names}")
        resolved = resolve_labels(self.classifier.labels, labels, batch_size, device)
        return classifier_cond_fn(self.classifier, resolved, float(scale), interval=interval)
