"""The forward process made visible: q(x_t | x_0) samples and the noise schedules.

For every beta schedule (linear and cosine, over the loaded model's T steps) the demo shows the same
noise added to the same image at timestep t, and plots alpha_bar_t and the signal-to-noise ratio
SNR(t) = alpha_bar_t / (1 - alpha_bar_t) on a log scale (Kingma et al. 2021, variational diffusion models).
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from PIL import Image

from ..datasets.shapes import PALETTE, POSITION_XY, SIZE_PX, render_shape
from ..diffusion import GaussianDiffusion
from ..images import from_pil
from ..pipeline import GuidedDiffusionPipeline
from ..schedule import BETA_SCHEDULES, get_beta_schedule
from .images import tensor_grid

NUM_NOISE_SAMPLES = 4
_EXAMPLES = (
    ("circle", "red", "large", "center"),
    ("triangle", "blue", "small", "top right"),
    ("square", "green", "large", "bottom left"),
    ("circle", "purple", "small", "left"),
)


def example_images() -> dict[str, Image.Image]:
    """A few Shapes32 images (32x32 RGB) to noise, keyed by their caption."""
    return {
        f"a {size} {color} {shape} in the {position}": Image.fromarray(
            render_shape(shape, PALETTE[color], SIZE_PX[size], POSITION_XY[position], background_grey=235)
        )
        for shape, color, size, position in _EXAMPLES
    }


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """Centre-crop ``image`` to a square and resize it to ``size`` pixels by area averaging (which
    undoes a nearest-neighbour enlargement exactly), a transparent one on white as in training:
    ``[1, 3, size, size]`` in [-1, 1]."""
    return from_pil(image, size)


def schedule_processes(pipe: GuidedDiffusionPipeline) -> dict[str, GaussianDiffusion]:
    """One process per beta schedule over the pipeline's T steps; the pipeline's own schedule is
    ``pipe.diffusion`` itself."""
    own = pipe.diffusion.config.beta_schedule
    steps = pipe.diffusion.num_timesteps
    return {name: pipe.diffusion if name == own else GaussianDiffusion(get_beta_schedule(name, steps)) for name in BETA_SCHEDULES}


def noised_grid(
    processes: dict[str, GaussianDiffusion], x0: torch.Tensor, t: int, num_samples: int = NUM_NOISE_SAMPLES, seed: int = 0
) -> Image.Image:
    """One row per schedule: ``x0`` ([1, 3, H, W] in [-1, 1]) then ``num_samples`` draws of
    x_t ~ q(x_t | x_0); every row uses the same noise, so the rows differ only by their schedule."""
    noise = torch.randn((num_samples, *x0.shape[1:]), generator=torch.Generator().manual_seed(seed))
    timesteps = torch.full((num_samples,), t, dtype=torch.long)
    rows = [torch.cat([x0, process.q_sample(x0.expand_as(noise), timesteps, noise=noise)]) for process in processes.values()]
    return tensor_grid(torch.cat(rows).clamp(-1, 1), nrow=num_samples + 1, target=96)


def schedule_table(processes: dict[str, GaussianDiffusion], t: int, own: str) -> str:
    """A Markdown table of alpha_bar_t, sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t) and SNR(t) per schedule."""
    lines = [
        f"**t = {t}** (of 0..{next(iter(processes.values())).num_timesteps - 1}); rows of the picture, top to bottom:",
        "",
        "| schedule | alpha_bar_t | signal sqrt(alpha_bar_t) | noise sqrt(1 - alpha_bar_t) | SNR(t) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, process in processes.items():
        alpha_bar = float(process.alphas_cumprod[t])
        snr = float(process.snr(torch.tensor([t]))[0])
        label = f"{name} (this model)" if name == own else name
        lines.append(f"| {label} | {alpha_bar:.4f} | {alpha_bar ** 0.5:.4f} | {(1 - alpha_bar) ** 0.5:.4f} | {snr:.3g} |")
    return "\n".join(lines)


def schedule_figure(processes: dict[str, GaussianDiffusion], t: int) -> Figure:
    """alpha_bar_t and SNR(t) (log scale) against t for every schedule, with t marked."""
    figure = Figure(figsize=(9, 3.2), layout="constrained")
    alpha_axis, snr_axis = figure.subplots(1, 2)
    for name, process in processes.items():
        steps = torch.arange(process.num_timesteps)
        alpha_axis.plot(steps.numpy(), process.alphas_cumprod.numpy(), label=name)
        snr_axis.plot(steps.numpy(), process.snr(steps).numpy(), label=name)
    for axis, title in ((alpha_axis, "alpha_bar_t"), (snr_axis, "SNR(t) = alpha_bar_t / (1 - alpha_bar_t)")):
        axis.axvline(t, color="black", linestyle="--", linewidth=1)
        axis.set_title(title)
        axis.set_xlabel("timestep t")
        axis.grid(alpha=0.3)
        axis.legend()
    snr_axis.set_yscale("log")
    return figure
