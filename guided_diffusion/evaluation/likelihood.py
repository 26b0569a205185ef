"""Bits/dim on held-out images: the variational bound of :meth:`GaussianDiffusion.nll_bpd`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..pipeline import GuidedDiffusionPipeline


def bits_per_dim(
    pipe: GuidedDiffusionPipeline, images: torch.Tensor, captions: Sequence[str], *, batch_size: int, seed: int = 0
) -> dict[str, float]:
    """Mean, std and count of the bound in bits/dim of ``images [N, 3, H, W]`` (in [-1, 1]) under
    their ``captions``."""
    if len(captions) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
    totals = []
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    for start in tqdm(range(0, len(captions), batch_size), desc="bits/dim", unit="batch", leave=False):
        x0 = images[start : start + batch_size].to(pipe.device)
        with torch.no_grad():
            features, mask = pipe.text_encoder.encode(list(captions[start : start + batch_size]))
            out = pipe.diffusion.nll_bpd(pipe.unet, x0, {"text_features": features, "text_mask": mask}, generator=generator)
        totals.append(out["total_bpd"].cpu())
    total = torch.cat(totals).double()
    return {"mean": float(total.mean()), "std": float(total.std()) if len(total) > 1 else 0.0, "n": int(len(total))}
