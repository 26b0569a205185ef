"""Shared fixtures: tests never touch the network and build their own tiny models."""

import os

# OpenMP threads that spin while waiting make a 2-core machine crawl when several processes share it
# (the 2-process training tests, gradio servers); this must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

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


def training_error_line(main, prog: str, args: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run a training command's ``main(args)`` in this process, expecting a user error: it returns exit
    status 2 and prints one line ``<prog>: error: ...``, which is returned. accelerate's process-wide
    state is reset afterwards, for the tests that follow."""
    from accelerate.state import AcceleratorState

    try:
        status = main(args)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert status == 2  # the exit status of every command's user errors
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith(f"{prog}: error: ")
    return lines[-1]
