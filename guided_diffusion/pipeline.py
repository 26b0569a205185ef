"""``GuidedDiffusionPipeline``: a text-conditioned diffusion model ready to sample, save and load.

A saved pipeline is a folder::

    pipeline.json          format, sampling settings, the component folders, and example prompts
                           (what the model draws well, for demos and users)
    unet/                  config.json + model.safetensors
    text_encoder/          config.json + model.safetensors (plus tokenizer files for transformers)
    diffusion/             config.json: the diffusion process (a DiffusionConfig), like diffusers' scheduler
    classifier/            config.json + model.safetensors, when the pipeline has a noise-aware classifier
    clip/                  config.json + model.safetensors, when it has a noise-aware CLIP

Nothing is unpickled on load, and a missing or corrupt file is refused by name. ``from_pretrained``
also takes the name of a model shipped inside the package (``guided_diffusion/pretrained/<name>``).
Folders of format version 1 (the diffusion settings inside ``pipeline.json``, no ``diffusion/``
folder) still load; saving one again writes version 2.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .compilation import check_compile_backend
from .config import read_yaml
from .diffusion import DiffusionConfig, GaussianDiffusion
from .errors import ConfigError, RequestError
from .guidance import CADS, ClassifierFreeGuidance, ConditionAnnealing, GuidanceHook, GuidanceSum, ModelEstimate, classifier_cond_fn, clip_cond_fn
from .images import to_numpy, to_pil, to_unit
from .models.classifier import ClassifierConfig, NoiseAwareClassifier
from .models.clip import CLIPConfig, NoiseAwareCLIP
from .models.unet import UNet, UNetConfig
from .request import SamplingConfig, SamplingRequest, check_autoguidance
from .samplers import sample
from .serialization import CheckpointError, load_json, save_json
from .text import OpenCLIPTextEncoder, TextEncoder, build_text_encoder, load_text_encoder

PIPELINE_FORMAT = "guided-diffusion-pipeline"
PIPELINE_FORMAT_VERSION = 2
PIPELINE_INDEX = "pipeline.json"
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
INDEX_KEYS = ("format", "format_version", "unet", "text_encoder", "classifier", "clip", "diffusion", "sampling", "example_prompts")

Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
Images = list[Image.Image] | np.ndarray | torch.Tensor


@dataclass
class GuidedDiffusionPipelineOutput:
    """What a pipeline call returns: ``images``, a list of N PIL images (``output_type="pil"``), a
    float32 array [N, H, W, 3] in [0, 1] (``"np"``) or a float tensor [N, 3, H, W] in [0, 1] (``"pt"``)."""

    images: Images


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


def checked_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists here; refused with the fix otherwise."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise RequestError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RequestError(f"device {str(device)!r}: CUDA is not available here; use cpu")
    return device


def _summed(cond_fns: list[GuidanceHook]) -> Callable[..., torch.Tensor] | None:
    """One guidance hook adding up the gradients of ``cond_fns`` (None for none; the one for one)."""
    if len(cond_fns) < 2:
        return cond_fns[0] if cond_fns else None
    return GuidanceSum(cond_fns)


def _checked_prompts(prompts: Sequence[str]) -> list[str]:
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise ConfigError(f"example_prompts must be a list of strings, got {prompts!r}")
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
    prompts to get an output whose ``images`` are the samples. ``diffusion`` is a
    :class:`~guided_diffusion.diffusion.GaussianDiffusion` built by ``from_config``, its
    :class:`~guided_diffusion.diffusion.DiffusionConfig`, or a ``diffusion`` section;
    ``sampling_config`` a :class:`~guided_diffusion.request.SamplingConfig` or a ``sampling`` section
    (the call's defaults). ``example_prompts`` are prompts the model draws well (the demo offers them);
    they are saved and loaded with the pipeline.
    """

    def __init__(
        self,
        unet: UNet,
        text_encoder: TextEncoder,
        diffusion: GaussianDiffusion | DiffusionConfig | Mapping[str, Any] | None = None,
        sampling_config: SamplingConfig | Mapping[str, Any] | None = None,
        classifier: NoiseAwareClassifier | None = None,
        example_prompts: Sequence[str] = (),
        clip: NoiseAwareCLIP | None = None,
    ) -> None:
        if unet.config.text_dim != text_encoder.width:
            raise ConfigError(
                f"unet.text_dim ({unet.config.text_dim}) must equal the text encoder width ({text_encoder.width})"
            )
        if not isinstance(diffusion, GaussianDiffusion):
            diffusion = GaussianDiffusion.from_config(diffusion)
        elif diffusion.config is None:
            raise ConfigError("the pipeline's GaussianDiffusion must be built by GaussianDiffusion.from_config (it is saved by its config)")
        outputs = unet.config.in_channels * (2 if diffusion.variance == "learned_range" else 1)
        if unet.config.out_channels != outputs:
            raise ConfigError(
                f"unet.out_channels is {unet.config.out_channels}, but a diffusion with variance {diffusion.variance!r} needs "
                f"{outputs} ({'twice ' if outputs != unet.config.in_channels else ''}unet.in_channels)"
            )
        if not isinstance(sampling_config, SamplingConfig):
            sampling_config = SamplingConfig.from_dict(sampling_config)
        self.unet = unet
        self.text_encoder = text_encoder
        self.diffusion = diffusion
        self.sampling_config = sampling_config
        self.classifier = classifier
        self.clip = clip
        self.example_prompts = _checked_prompts(example_prompts)
        self.folder: Path | None = None

    @property
    def diffusion_config(self) -> dict[str, Any]:
        """The diffusion process's config as a dict (see :class:`~guided_diffusion.diffusion.DiffusionConfig`)."""
        return self.diffusion.config.to_dict()

    # ------------------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, path_or_dict: str | os.PathLike | Mapping[str, Any]) -> "GuidedDiffusionPipeline":
        """Fresh, randomly initialised components from a YAML config or its dict: sections ``unet``,
        ``text_encoder``, ``diffusion``, ``sampling``, and ``classifier`` (with its ``labels``) and
        ``clip`` where the pipeline has them; other sections (``data``, ``training``) are ignored.
        ``unet.text_dim`` defaults to the text encoder's width. ``from_config(pipe.config)`` rebuilds
        every component of ``pipe`` with the same architecture."""
        config = read_yaml(path_or_dict)
        missing = [s for s in ("unet", "text_encoder") if not config.get(s)]
        if missing:
            raise ConfigError(f"config has no {' or '.join(missing)} section; sections found: {', '.join(config) or 'none'}")
        text_encoder = build_text_encoder(config["text_encoder"])
        unet = UNet(UNetConfig.from_dict({"text_dim": text_encoder.width, **config["unet"]}))
        classifier = NoiseAwareClassifier(ClassifierConfig.from_dict(config["classifier"])) if config.get("classifier") else None
        clip = NoiseAwareCLIP(CLIPConfig.from_dict(config["clip"])) if config.get("clip") else None
        return cls(unet, text_encoder, config.get("diffusion"), config.get("sampling"), classifier, clip=clip)

    @property
    def config(self) -> dict[str, Any]:
        """The full configuration, in the layout :meth:`from_config` reads (with ``classifier`` and
        ``clip`` when the pipeline has them)."""
        config = {
            "unet": self.unet.config.to_dict(),
            "text_encoder": dict(self.text_encoder.config),
            "diffusion": self.diffusion.config.to_dict(),
            "sampling": self.sampling_config.to_dict(),
        }
        if self.classifier is not None:
            config["classifier"] = self.classifier.config.to_dict()
        if self.clip is not None:
            config["clip"] = self.clip.config.to_dict()
        return config

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> "GuidedDiffusionPipeline":
        """Load a pipeline folder written by :meth:`save_pretrained`, or a shipped model by name, in
        eval mode, onto ``device`` and in ``torch_dtype`` (a floating dtype such as ``torch.float16``;
        None: as saved, float32 on the CPU). The folder it came from is kept as ``pipe.folder``
        (``None`` for pipelines built in memory)."""
        device = checked_device(device) if device is not None else None
        if torch_dtype is not None and not (isinstance(torch_dtype, torch.dtype) and torch_dtype.is_floating_point):
            raise RequestError(f"torch_dtype must be a floating torch dtype such as torch.float16, got {torch_dtype!r}")
        directory = resolve_pipeline_folder(name_or_path)
        index_path = directory / PIPELINE_INDEX
        index = load_json(index_path)
        if index.get("format") != PIPELINE_FORMAT:
            raise CheckpointError(f"{index_path} is not a {PIPELINE_FORMAT} index")
        if index.get("format_version", 1) not in (1, PIPELINE_FORMAT_VERSION):
            raise CheckpointError(
                f"{index_path} has format version {index.get('format_version')}; this version of guided_diffusion "
                f"reads 1 and {PIPELINE_FORMAT_VERSION}: upgrade guided_diffusion to load it"
            )
        unknown = sorted(set(index) - set(INDEX_KEYS))
        if unknown:
            raise CheckpointError(f"{index_path} has unknown entries {unknown}; valid entries: {', '.join(INDEX_KEYS)}")
        try:
            diffusion = index.get("diffusion")
            if isinstance(diffusion, str):  # format 2: a component folder
                diffusion = GaussianDiffusion.from_pretrained(directory / diffusion)
            pipe = cls(
                UNet.from_pretrained(directory / index["unet"]),
                load_text_encoder(directory / index["text_encoder"]),
                diffusion,
                index.get("sampling"),
                NoiseAwareClassifier.from_pretrained(directory / index["classifier"]) if index.get("classifier") else None,
                index.get("example_prompts", []),
                NoiseAwareCLIP.from_pretrained(directory / index["clip"]) if index.get("clip") else None,
            )
        except KeyError as err:
            raise CheckpointError(f"{index_path} lacks the entry {err}") from None
        except ConfigError as err:
            raise CheckpointError(f"bad pipeline in {directory}: {err}") from None
        for module in (pipe.unet, pipe.classifier, pipe.clip):
            if module is not None:
                module.eval()
        pipe.folder = directory
        if device is not None or torch_dtype is not None:
            pipe.to(device, torch_dtype)
        return pipe

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the pipeline folder. The index is removed first and written last, so a write that is
        interrupted leaves a folder that :meth:`from_pretrained` refuses (missing ``pipeline.json``)
        rather than one that mixes old and new components."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / PIPELINE_INDEX).unlink(missing_ok=True)
        self.unet.save_pretrained(directory / "unet")
        self.text_encoder.save_pretrained(directory / "text_encoder")
        self.diffusion.save_pretrained(directory / "diffusion")
        if self.classifier is not None:
            self.classifier.save_pretrained(directory / "classifier")
        if self.clip is not None:
            self.clip.save_pretrained(directory / "clip")
        save_json(
            directory / PIPELINE_INDEX,
            {
                "format": PIPELINE_FORMAT,
                "format_version": PIPELINE_FORMAT_VERSION,
                "unet": "unet",
                "text_encoder": "text_encoder",
                "diffusion": "diffusion",
                "classifier": "classifier" if self.classifier is not None else None,
                "clip": "clip" if self.clip is not None else None,
                "sampling": self.sampling_config.to_dict(),
                "example_prompts": self.example_prompts,
            },
        )

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "GuidedDiffusionPipeline":
        """Move every component to ``device`` and/or cast its floating parameters to ``dtype``; returns self."""
        for module in (self.unet, self.text_encoder, self.classifier, self.clip):
            if module is not None:
                module.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

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

    def restrict_vocabulary(self, prompts: Sequence[str]) -> dict[str, int]:
        """Keep the token embeddings of the text encoder (and of the CLIP's text tower) that ``prompts``
        use, typically every caption of the training data: the rest were never trained. Prompts made
        of kept tokens give exactly the features they gave before; other tokens all read one shared
        unknown embedding. Needs open_clip text towers. Returns the token ids kept, by component."""
        towers = {"text_encoder": self.text_encoder}
        if self.clip is not None:
            towers["clip"] = self.clip.text
        other = [name for name, tower in towers.items() if not isinstance(tower, OpenCLIPTextEncoder)]
        if other:
            raise ConfigError(f"restricting the vocabulary needs open_clip text towers; {other} use another backend")
        prompts = list(prompts)
        kept = {"text_encoder": self.text_encoder.restrict_vocabulary(prompts)}
        if self.clip is not None:
            kept["clip"] = self.clip.restrict_vocabulary(prompts)
        return kept

    def parameter_counts(self) -> dict[str, int]:
        """Number of parameters of each component."""
        counts = {"unet": self.unet.num_parameters, "text_encoder": sum(p.numel() for p in self.text_encoder.parameters())}
        for name, module in (("classifier", self.classifier), ("clip", self.clip)):
            if module is not None:
                counts[name] = sum(p.numel() for p in module.parameters())
        return counts

    # ------------------------------------------------------------------------------ sampling

    def __call__(
        self,
        prompt: str | list[str],
        *,
        num_images_per_prompt: int = 1,
        num_inference_steps: int | None = None,
        sampler: str | None = None,
        timestep_schedule: str | None = None,
        eta: float | None = None,
        guidance_scale: float | None = None,
        guidance_interval: Sequence[float] | None = None,
        classifier_scale: float = 0.0,
        classifier_labels: Mapping[str, Any] | None = None,
        classifier_max_t: int | None = None,
        classifier_interval: Sequence[float] | None = None,
        autoguidance: "GuidedDiffusionPipeline | None" = None,
        cads: CADS | bool | Mapping[str, float] | None = None,
        clip_guidance_scale: float | None = None,
        clip_guidance_prompt: str | list[str] | None = None,
        clip_guidance_negative_prompt: str | list[str] | None = None,
        clip_guidance_interval: Sequence[float] | None = None,
        guidance_reads: str | None = None,
        thresholding: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        callback: Callback | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        progress: bool = False,
    ) -> GuidedDiffusionPipelineOutput | tuple[Images]:
        """Sample ``num_images_per_prompt`` images for each prompt (prompt-major order).

        ``num_inference_steps``, ``sampler``, ``timestep_schedule``, ``eta`` and ``guidance_scale``
        default to the pipeline's :class:`~guided_diffusion.request.SamplingConfig` (see
        :data:`~guided_diffusion.samplers.SAMPLERS` and :data:`~guided_diffusion.samplers.TIMESTEP_SCHEDULES`);
        ``eta`` goes to the samplers that take it (``ddim``, ``dpm++2m-sde``; None in the config: each
        sampler's default), and is refused by the others when given here. ``thresholding`` (a
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
        ``clip_guidance_negative_prompt`` (one caption or a list) turns that into guidance by the CLIP's
        log softmax over the guidance prompt and these captions: towards the prompt and away from them
        (see :func:`~guided_diffusion.guidance.clip_cond_fn`).
        ``guidance_reads`` says what the classifier and the CLIP read (None: the sampling config's):
        ``"x_t"``, the noisy image at its timestep (Dhariwal & Nichol, GLIDE), or ``"x0"``, the model's
        estimate of the clean image, read at t = 0 with the gradient taken through the model (Bansal et al. 2023; a
        backward of the model per guided step, sharing the step's forward; see :func:`~guided_diffusion.guidance.classifier_cond_fn`).
        ``seed`` (or ``generator``) makes the result reproducible on the same device; ``generator`` may
        also be a list with one generator per image (prompt-major), where consecutive images that share
        one generator draw their noise together, as that generator alone would for them. ``callback(step,
        num_steps, x_t, pred_x0)`` sees each step's tensors [N, C, H, W] in [-1, 1].
        Every argument is checked by :meth:`SamplingRequest.check <guided_diffusion.request.SamplingRequest.check>`.
        Returns a :class:`GuidedDiffusionPipelineOutput` (``images``: see ``output_type`` there), or the
        tuple ``(images,)`` with ``return_dict=False``.
        """
        arguments = locals()
        request = SamplingRequest.check(self, prompt, **{name: arguments[name] for name in SamplingRequest.OPTIONS})
        check_autoguidance(self, autoguidance)
        device = self.device
        if generator is None and seed is not None:
            generator = torch.Generator(device=device).manual_seed(int(seed))
        x = self._sample(request, autoguidance, generator, callback, progress)
        images: Images = {"pt": to_unit, "np": to_numpy, "pil": to_pil}[request.output_type](x)
        return GuidedDiffusionPipelineOutput(images) if return_dict else (images,)

    def _sample(
        self,
        request: SamplingRequest,
        autoguidance: "GuidedDiffusionPipeline | None",
        generator: torch.Generator | Sequence[torch.Generator] | None,
        callback: Callback | None,
        progress: bool,
    ) -> torch.Tensor:
        """The samples of a checked ``request``, [N, C, H, W] in [-1, 1] on the pipeline's device."""
        prompts, scale, device = list(request.prompts), request.guidance_scale, self.device
        num_timesteps = self.diffusion.num_timesteps
        guides = [autoguidance.unet, autoguidance.text_encoder] if autoguidance is not None else []
        with _eval_mode(self.unet, self.text_encoder, self.classifier, self.clip, *guides), torch.no_grad():
            features, mask = self.text_encoder.encode(prompts)
            model_kwargs = {"text_features": features, "text_mask": mask}
            model: Callable[..., torch.Tensor] = self.unet
            if autoguidance is not None and scale != 1.0:
                weak_features, weak_mask = autoguidance.text_encoder.encode(prompts)
                weak = {"text_features": weak_features, "text_mask": weak_mask}
                model = ClassifierFreeGuidance(self.unet, scale, weak, request.guidance_interval, guide_model=autoguidance.unet)
            elif scale != 1.0 and any(prompts):  # all empty: cond == uncond, the mix changes nothing
                empty_features, empty_mask = self.text_encoder.encode([""])
                uncond = {"text_features": empty_features.expand_as(features), "text_mask": empty_mask.expand_as(mask)}
                model = ClassifierFreeGuidance(self.unet, scale, uncond, request.guidance_interval)
            # before CADS, whose noise draws belong to the sampler's own calls
            denoiser = ModelEstimate(self.diffusion, model) if request.guidance_reads == "x0" else None
            if request.cads is not None:
                model = ConditionAnnealing(model, request.cads, num_timesteps, generator)
            cond_fns = []
            if request.classifier_labels is not None:
                labels = {attribute: indices.to(device) for attribute, indices in request.classifier_labels.items()}
                cond_fns.append(
                    classifier_cond_fn(self.classifier, labels, request.classifier_scale, interval=request.classifier_interval, denoiser=denoiser)
                )
            if request.clip_guidance_prompts is not None:
                cond_fns.append(
                    clip_cond_fn(
                        self.clip,
                        list(request.clip_guidance_prompts),
                        request.clip_guidance_scale,
                        request.clip_guidance_interval,
                        negatives=request.clip_guidance_negatives,
                        denoiser=denoiser,
                    )
                )
            config = self.unet.config
            return sample(
                model,
                self.diffusion,
                (len(prompts), config.in_channels, config.image_size, config.image_size),
                sampler=request.sampler,
                steps=request.num_inference_steps,
                timestep_schedule=request.timestep_schedule,
                model_kwargs=model_kwargs,
                cond_fn=_summed(cond_fns),
                thresholding=request.thresholding,
                generator=generator,
                device=device,
                dtype=self.dtype,
                callback=callback,
                progress=progress,
                **request.sampler_options,
            )
