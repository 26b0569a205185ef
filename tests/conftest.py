"""Shared fixtures: tests never touch the network and build their own tiny models."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A saved tiny pipeline with randomly initialised, non-trivial weights (the UNet's zero-initialised
    output layer is perturbed so that samples depend on the prompt)."""
    from guided_diffusion import GuidedDiffusionPipeline

    torch.manual_seed(0)
    pipe = GuidedDiffusionPipeline.from_config(TINY_CONFIG)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    directory = tmp_path_factory.mktemp("pipelines") / "tiny"
    pipe.save_pretrained(directory)
    return directory
