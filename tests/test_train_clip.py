"""train.clip end to end on a tiny captioned imagefolder: outputs, the retrieval report, exact resume,
user errors; and a diffusion config that loads the CLIP's text tower, frozen."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from guided_diffusion.models.clip import CLIPConfig, NoiseAwareCLIP
from guided_diffusion.pipeline import GuidedDiffusionPipeline
from guided_diffusion.text import build_text_encoder, load_text_encoder

from .imagefolder import write_imagefolder

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
TEXT = {"backend": "open_clip", "context_length": 16, "width": 32, "heads": 2, "layers": 1}
CONFIG = {
    "clip": {"image_size": 16, "embed_dim": 16, "base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
             "attention_resolutions": [8], "num_heads": 2, "text_encoder": TEXT},
    "diffusion": {"num_timesteps": 1000, "beta_schedule": "linear"},
    "data": {"image_column": "image", "caption_column": "text", "resolution": 16, "caption_dropout": 0.0},
    "training": {"seed": 0, "train_batch_size": 4, "max_train_steps": 6, "learning_rate": 1e-3,
                 "checkpointing_steps": 3, "validation_steps": 3, "eval_samples": 4, "eval_batch_size": 4,
                 "max_timestep": 200, "ema_decay": 0.9},
}
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rows = [{"rgb": rgb, "box": (8, 8), "metadata": {"text": f"a {name} square"}} for name, rgb in COLOURS.items()] * 4
    return write_imagefolder(tmp_path_factory.mktemp("clipdata") / "folder", rows)


def run_clip(config_path: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train.clip", "--config", str(config_path), *flags],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600,
    )


def write_config(path: Path, **changes: dict) -> Path:
    config = {section: dict(values) for section, values in CONFIG.items()}
    for section, values in changes.items():
        config[section].update(values)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory, tiny_pipeline_dir: Path) -> Path:
    """The run's folder; the run also attached its CLIP to a copy of the tiny pipeline, ``../pipeline``."""
    out = tmp_path_factory.mktemp("clip") / "run"
    shutil.copytree(tiny_pipeline_dir, out.parent / "pipeline")
    config = write_config(out.parent / "clip.yaml")
    result = run_clip(config, "--train_data_dir", str(data), "--output_dir", str(out), "--attach_to_pipeline", str(out.parent / "pipeline"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "attached the clip to the pipeline" in result.stdout
    return out


def test_the_clip_is_attached_to_a_pipeline_that_guides_with_it(trained: Path) -> None:
    pipe = GuidedDiffusionPipeline.from_pretrained(trained.parent / "pipeline")
    ours, theirs = pipe.clip.state_dict(), NoiseAwareCLIP.from_pretrained(trained / "clip").state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    plain = pipe("", num_inference_steps=3, seed=0, output_type="pt").images
    steered = pipe("", num_inference_steps=3, seed=0, clip_guidance_scale=50.0, clip_guidance_prompt="a red square", output_type="pt").images
    assert not torch.equal(plain, steered)


def test_a_pipeline_of_another_size_is_refused_before_training(data: Path, tmp_path: Path, tiny_pipeline_dir: Path) -> None:
    config = write_config(tmp_path / "big.yaml", clip={"image_size": 32}, data={"resolution": 32})
    result = run_clip(config, "--train_data_dir", str(data), "--output_dir", str(tmp_path / "run"), "--attach_to_pipeline", str(tiny_pipeline_dir))
    assert result.returncode == 2 and "makes 16x16 images but the clip reads 32x32" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_run_writes_the_clip_its_text_tower_and_the_retrieval_report(trained: Path) -> None:
    assert {"clip", "text_encoder", "retrieval_by_t.md", "retrieval_by_t.json", "checkpoint-6"} <= set(os.listdir(trained))
    report = (trained / "retrieval_by_t.md").read_text()
    assert "| image -> text top-1 |" in report and "Step 6 (EMA weights)" in report
    clip = NoiseAwareCLIP.from_pretrained(trained / "clip")
    encoder = load_text_encoder(trained / "text_encoder")
    tokens = encoder.tokenize(["a red square"])
    assert torch.equal(encoder(tokens)[0], clip.text(tokens)[0])  # the saved tower is the CLIP's own


def test_resume_continues_exactly(data: Path, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    config = write_config(tmp_path / "clip.yaml")
    first = run_clip(config, "--train_data_dir", str(data), "--output_dir", str(out), "--max_train_steps", "3")
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_clip(config, "--train_data_dir", str(data), "--output_dir", str(out), "--resume_from_checkpoint", "latest")
    assert second.returncode == 0, second.stderr[-2000:]
    ours = NoiseAwareCLIP.from_pretrained(out / "clip").state_dict()
    reference = NoiseAwareCLIP.from_pretrained(trained / "clip").state_dict()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


HARD_NEGATIVES = {"color": {name: [name] for name in COLOURS}, "shape": {"square": ["square"], "circle": ["circle", "disc"]}}


def test_hard_negatives_are_trained_reported_and_resume_exactly(data: Path, trained: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "clip.yaml", training={"hard_negatives": HARD_NEGATIVES, "hard_negative_weight": 2.0})
    whole = run_clip(config, "--train_data_dir", str(data), "--output_dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    report = (tmp_path / "whole" / "retrieval_by_t.md").read_text()
    assert "| own caption over its color swap |" in report and "| own caption over its shape swap |" in report
    shares = json.loads((tmp_path / "whole" / "retrieval_by_t.json").read_text())["hard_negatives"]
    assert set(shares) == {"color", "shape"} and all(len(v) == 4 and all(0 <= a <= 1 for a in v) for v in shares.values())
    logged = [json.loads(line) for line in (tmp_path / "whole" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/hard_negatives/color/t0-249" in row for row in logged)
    ours = NoiseAwareCLIP.from_pretrained(tmp_path / "whole" / "clip").state_dict()
    plain = NoiseAwareCLIP.from_pretrained(trained / "clip").state_dict()
    assert not all(torch.equal(ours[k], plain[k]) for k in plain)  # the extra term changed the training
    first = run_clip(config, "--train_data_dir", str(data), "--output_dir", str(tmp_path / "resumed"), "--max_train_steps", "3")
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_clip(config, "--train_data_dir", str(data), "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "latest")
    assert second.returncode == 0, second.stderr[-2000:]
    resumed = NoiseAwareCLIP.from_pretrained(tmp_path / "resumed" / "clip").state_dict()
    assert all(torch.equal(resumed[k], ours[k]) for k in ours)


def test_user_errors_are_one_line(data: Path, tmp_path: Path) -> None:
    dropout = run_clip(write_config(tmp_path / "a.yaml", data={"caption_dropout": 0.1}), "--train_data_dir", str(data))
    assert dropout.returncode != 0 and "set data.caption_dropout to 0" in dropout.stderr
    assert "Traceback" not in dropout.stderr
    too_late = run_clip(write_config(tmp_path / "b.yaml", training={"max_timestep": 1000}), "--train_data_dir", str(data))
    assert "training.max_timestep must be below num_timesteps (1000), got 1000" in too_late.stderr
    config = {section: dict(values) for section, values in CONFIG.items()}
    del config["clip"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    no_clip = run_clip(tmp_path / "c.yaml", "--train_data_dir", str(data))
    assert "has no clip section" in no_clip.stderr
    one_class = run_clip(write_config(tmp_path / "d.yaml", training={"hard_negatives": {"shape": {"square": ["square"]}}}), "--train_data_dir", str(data))
    assert one_class.returncode != 0 and one_class.stderr.strip().splitlines()[-1].endswith(
        "training.hard_negatives.shape needs at least two classes to swap between, got ['square']"
    )


def test_logits_are_scaled_cosines() -> None:
    torch.manual_seed(0)
    clip = NoiseAwareCLIP(CLIPConfig.from_dict(CONFIG["clip"])).eval()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 10, 999])
    logits = clip.logits(x, t, ["a", "b"])
    image, text = clip.encode_image(x, t), clip.encode_text(["a", "b"])
    assert logits.shape == (3, 2)
    assert torch.allclose(image.norm(dim=-1), torch.ones(3)) and torch.allclose(text.norm(dim=-1), torch.ones(2))
    assert torch.allclose(logits, clip.scale() * image @ text.T)
    assert float(clip.scale().detach()) == pytest.approx(1 / 0.07)


def test_a_diffusion_config_loads_the_text_tower_frozen(trained: Path) -> None:
    encoder = build_text_encoder({"from_pretrained": str(trained / "text_encoder"), "trainable": False})
    assert not encoder.trainable and not any(p.requires_grad for p in encoder.parameters())
    assert encoder.config["trainable"] is False
    config = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    config["text_encoder"] = {"from_pretrained": str(trained / "text_encoder")}
    pipe = GuidedDiffusionPipeline.from_config(config)
    assert pipe.unet.config.text_dim == 32 and not pipe.text_encoder.trainable
    tokens = pipe.text_encoder.tokenize(["a red square"])
    reference = load_text_encoder(trained / "text_encoder")
    assert torch.equal(pipe.text_encoder(tokens)[0], reference(tokens)[0])
    with pytest.raises(ValueError, match="takes only trainable and segment_separator besides it, not \\['width'\\]"):
        build_text_encoder({"from_pretrained": str(trained / "text_encoder"), "width": 8})
