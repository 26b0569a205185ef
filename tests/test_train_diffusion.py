"""train.diffusion end to end on a tiny imagefolder: outputs, exact resume, SIGKILL, two processes,
user errors; and the training helpers (config, EMA, text conditioning) in process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from guided_diffusion.config import read_yaml
from guided_diffusion.errors import ConfigError
from guided_diffusion.pipeline import PIPELINE_INDEX, PRETRAINED_DIR, GuidedDiffusionPipeline
from guided_diffusion.request import SamplingConfig
from guided_diffusion.serialization import load_json
from guided_diffusion.text import build_text_encoder
from train.conditioning import CachedTextFeatures, TextConditionedUNet, TextConditioning
from train.config import MODEL_SECTIONS, DiffusionTrainingConfig, TrainingConfig, parse_run_config, read_run_yaml
from train.ema import EMA
from train.loop import choose_mixed_precision, make_accelerator

from .conftest import training_error_line
from .imagefolder import write_imagefolder

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
STEPS = 8
BATCH = 4
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}
CHECKPOINT_FILES = ("trainer_state.json", "model.safetensors", "optimizer.bin", "random_states_0.pkl")


def make_imagefolder(root: Path, num_images: int, broken: tuple[int, ...] = ()) -> Path:
    """16x16 PNGs of a coloured 8x8 square on grey with captions in metadata.jsonl; ``broken`` ones are
    not images."""
    names = [list(COLORS)[i % len(COLORS)] for i in range(num_images)]
    rows = [
        {"rgb": COLORS[name], "box": (8, 8), "broken": i in broken, "metadata": {"text": f"a {name} square"}}
        for i, name in enumerate(names)
    ]
    return write_imagefolder(root, rows)


def flags(data: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--config", "configs/tiny.yaml", "--train_data_dir", str(data), "--output_dir", str(output_dir),
        "--train_batch_size", str(BATCH), "--max_train_steps", str(STEPS), "--checkpointing_steps", "4",
        "--validation_prompts", "a red square", "a blue square", "--validation_steps", "4", "--validation_sampling_steps", "5",
        *extra,
    ]


def command(args: list[str], processes: int = 1) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "train.diffusion", *args]
    launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    quiet = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [sys.executable, *launcher, *quiet, "-m", "train.diffusion", *args]


def train(args: list[str], processes: int = 1, expect_ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command(args, processes), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    if expect_ok:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


def checkpoints(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def assert_complete(checkpoint: Path) -> None:
    names = {p.name for p in checkpoint.iterdir()}
    assert set(CHECKPOINT_FILES) <= names, (checkpoint, names)
    assert {"custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl"} <= names  # LR scheduler, EMA


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("data") / "images", 33, broken=(5,))


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted single-process run of STEPS updates."""
    output_dir = tmp_path_factory.mktemp("runs") / "reference"
    train(flags(data, output_dir))
    return output_dir


# ---------------------------------------------------------------------------------- end to end


def test_run_writes_checkpoints_logs_validation_and_pipeline(reference: Path) -> None:
    assert [p.name for p in checkpoints(reference)] == ["checkpoint-4", "checkpoint-8"]
    for checkpoint in checkpoints(reference):
        assert_complete(checkpoint)
    records = metrics(reference)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(np.isfinite(r["loss"]) and r["images_per_sec"] > 0 and "lr" in r for r in records)
    assert records[-1]["images_seen"] + records[-1]["skipped_images"] == STEPS * BATCH
    assert (reference / "loss_curve.png").is_file() and (reference / "config.yaml").is_file()
    assert sorted(p.name for p in (reference / "validation").iterdir()) == ["step-000004.png", "step-000008.png"]

    pipe = GuidedDiffusionPipeline.from_pretrained(reference)
    images = pipe(["a red square", "a blue square"], num_inference_steps=4, seed=0, output_type="pt").images
    assert images.shape == (2, 3, 16, 16) and 0.0 <= images.min() and images.max() <= 1.0


def test_exported_pipeline_holds_the_ema_weights(reference: Path) -> None:
    ema = torch.load(reference / "checkpoint-8" / "custom_checkpoint_1.pkl", weights_only=True)["shadow"]
    trained = load_file(str(reference / "checkpoint-8" / "model.safetensors"))
    exported = load_file(str(reference / "unet" / "model.safetensors"))
    name = next(iter(exported))
    assert torch.equal(exported[name], ema[f"unet.{name}"])
    assert not torch.equal(exported[name], trained[f"unet.{name}"])


def test_resume_reproduces_the_losses_exactly(reference: Path, data: Path, tmp_path: Path) -> None:
    result = train(flags(data, tmp_path / "resumed", "--resume_from_checkpoint", str(reference / "checkpoint-4")))
    assert "resumed from" in result.stdout + result.stderr
    resumed = metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [5, 6, 7, 8]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in metrics(reference)[4:]]
    final, expected = (load_file(str(d / "unet" / "model.safetensors")) for d in (tmp_path / "resumed", reference))
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_sigkill_mid_training_resumes_from_the_last_checkpoint(reference: Path, data: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "killed"
    args = flags(
        data, output_dir, "--checkpointing_steps", "2", "--checkpoints_total_limit", "2", "--validation_steps", "100"
    )
    process = subprocess.Popen(
        command([*args, "--max_train_steps", "40"]),
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not checkpoints(output_dir) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    killed_at = checkpoints(output_dir)
    assert killed_at and int(killed_at[-1].name.split("-")[1]) < STEPS
    for checkpoint in killed_at:
        assert_complete(checkpoint)

    result = train([*args, "--resume_from_checkpoint", "latest"])
    assert f"resumed from {killed_at[-1]}" in result.stdout + result.stderr
    assert [r["loss"] for r in metrics(output_dir)] == [r["loss"] for r in metrics(reference)]
    assert [p.name for p in checkpoints(output_dir)] == ["checkpoint-6", "checkpoint-8"]
    assert not list(output_dir.glob(".tmp-*")) and not list(output_dir.glob(".old-*"))


def test_two_processes_frozen_text_encoder_accumulation_exact_resume(data: Path, tmp_path: Path) -> None:
    frozen = tmp_path / "frozen_text_encoder.yaml"  # the UNet alone is data-parallel; text features are cached
    frozen.write_text((REPO / "configs" / "tiny.yaml").read_text().replace("trainable: true", "trainable: false"))
    args = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--gradient_accumulation_steps", "2"]
    args += ["--config", str(frozen)]
    train(flags(data, tmp_path / "ddp", *args), processes=2)
    checkpoint = tmp_path / "ddp" / "checkpoint-2"
    assert_complete(checkpoint)
    assert (checkpoint / "random_states_1.pkl").is_file()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and len(state["positions"]) == 2
    records = metrics(tmp_path / "ddp")
    assert records[-1]["images_seen"] + records[-1]["skipped_images"] == 4 * 2 * BATCH * 2
    GuidedDiffusionPipeline.from_pretrained(tmp_path / "ddp")

    train(flags(data, tmp_path / "ddp_resumed", *args, "--resume_from_checkpoint", str(checkpoint)), processes=2)
    assert [r["loss"] for r in metrics(tmp_path / "ddp_resumed")] == [r["loss"] for r in records[2:]]

    # and on one process: the epoch goes on from the next unread row (32 rows read: 2 updates x 2 x 8)
    one = tmp_path / "one"
    result = train(flags(data, one, *args, "--resume_from_checkpoint", str(checkpoint)))
    note = "resumed on 1 process a checkpoint written by 2: the data goes on from row 32 of epoch 0 in global batches of 4 (was 8)"
    assert note in result.stdout + result.stderr
    state = json.loads((one / "checkpoint-4" / "trainer_state.json").read_text())
    # 33 rows: row 32 leaves no full batch, so epoch 1 starts; 2 updates x 2 micro-batches x 4 rows
    assert state["num_processes"] == 1 and state["positions"] == [{"epoch": 1, "offset": 16}]


def test_bf16_autocast_trains_and_resumes_exactly_on_the_cpu(data: Path, tmp_path: Path) -> None:
    bf16 = ["--mixed_precision", "bf16", "--validation_steps", "100"]
    train(flags(data, tmp_path / "bf16", *bf16))
    records = metrics(tmp_path / "bf16")
    assert len(records) == STEPS and all(np.isfinite(r["loss"]) for r in records)
    train(flags(data, tmp_path / "resumed", *bf16, "--resume_from_checkpoint", str(tmp_path / "bf16" / "checkpoint-4")))
    assert [r["loss"] for r in metrics(tmp_path / "resumed")] == [r["loss"] for r in records[4:]]
    GuidedDiffusionPipeline.from_pretrained(tmp_path / "bf16")("a red square", num_inference_steps=2, seed=0)


def test_a_one_process_checkpoint_resumes_on_two_processes(reference: Path, data: Path, tmp_path: Path) -> None:
    checkpoint = reference / "checkpoint-4"  # 16 rows of epoch 0 read
    result = train(flags(data, tmp_path / "two", "--resume_from_checkpoint", str(checkpoint)), processes=2)
    note = "resumed on 2 processes a checkpoint written by 1: the data goes on from row 16 of epoch 0 in global batches of 8"
    assert note in result.stdout + result.stderr and "processes [1] seeded from (seed, step, process)" in result.stdout + result.stderr
    state = json.loads((tmp_path / "two" / "checkpoint-8" / "trainer_state.json").read_text())
    # rows 16-23 and 24-31 of epoch 0, then epoch 1's 0-7 and 8-15: none repeated, none skipped
    assert state["positions"] == [{"epoch": 1, "offset": 16}] * 2 and state["position_unit"] == "rows"
    records = metrics(tmp_path / "two")
    assert [r["step"] for r in records] == [5, 6, 7, 8]
    assert records[-1]["images_seen"] + records[-1]["skipped_images"] == 4 * BATCH + 4 * 2 * BATCH


def test_a_checkpoint_that_counted_batches_still_resumes_exactly(reference: Path, data: Path, tmp_path: Path) -> None:
    old = tmp_path / "old-checkpoint-4"
    shutil.copytree(reference / "checkpoint-4", old)
    state = json.loads((old / "trainer_state.json").read_text())
    del state["position_unit"]
    state["positions"] = [{"epoch": 0, "offset": 4}]  # global batches, as checkpoints recorded them before
    (old / "trainer_state.json").write_text(json.dumps(state))
    train(flags(data, tmp_path / "resumed", "--resume_from_checkpoint", str(old)))
    assert [r["loss"] for r in metrics(tmp_path / "resumed")] == [r["loss"] for r in metrics(reference)[4:]]


def test_a_compiled_run_saves_what_an_uncompiled_one_does_and_resumes_without_compiling(
    reference: Path, data: Path, tmp_path: Path
) -> None:
    compiled = tmp_path / "compiled"
    extra = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--validation_steps", "100"]
    result = train(flags(data, compiled, *extra, "--compile", "--compile_backend", "eager"))
    assert "torch.compile (eager): about " in result.stdout + result.stderr
    assert "mixed precision: no (the default off CUDA)" in result.stdout
    expected = [r["loss"] for r in metrics(reference)]
    assert [r["loss"] for r in metrics(compiled)] == pytest.approx(expected[:4], rel=1e-5)
    for name in ("model.safetensors", "unet/model.safetensors"):
        folder = "checkpoint-4/" if name == "model.safetensors" else ""
        keys = set(load_file(str(compiled / f"{folder}{name}")))
        assert keys == set(load_file(str(reference / f"{folder}{name}"))) and not any("_orig_mod" in k for k in keys)
    ema, reference_ema = (torch.load(d / "checkpoint-4" / "custom_checkpoint_1.pkl", weights_only=True) for d in (compiled, reference))
    assert set(ema["shadow"]) == set(reference_ema["shadow"])

    resumed = tmp_path / "resumed"
    train(flags(data, resumed, "--resume_from_checkpoint", str(compiled / "checkpoint-4"), "--validation_steps", "100"))
    assert [r["loss"] for r in metrics(resumed)] == pytest.approx(expected[4:], rel=1e-5)


def test_gradient_checkpointing_trains_the_same_losses_and_publishes_the_same_model(
    reference: Path, data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "checkpointed"
    train(flags(data, run, "--gradient_checkpointing", "--max_train_steps", "4", "--validation_steps", "100"))
    assert [r["loss"] for r in metrics(run)] == [r["loss"] for r in metrics(reference)[:4]]
    config, expected = (json.loads((d / "unet" / "config.json").read_text()) for d in (run, reference))
    assert config == expected
    published = load_file(str(run / "unet" / "model.safetensors"))
    assert set(published) == set(load_file(str(reference / "unet" / "model.safetensors")))


# ---------------------------------------------------------------------------------- user errors


def error_in_process(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run ``train.diffusion.main(args)`` in this process, expecting a user error; returns its line."""
    from train.diffusion import main

    return training_error_line(main, "train.diffusion", args, capsys)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.diffusion: error")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_wrong_column_is_refused_with_the_columns(data: Path, tmp_path: Path) -> None:
    result = train(flags(data, tmp_path / "run", "--caption_column", "caption"), expect_ok=False)
    line = _one_error_line(result)
    assert "'caption'" in line and "image, text" in line
    assert not (tmp_path / "run" / "checkpoint-4").exists()


def test_non_finite_loss_stops_and_deletes_the_checkpoint_whose_weights_made_it(data: Path, tmp_path: Path) -> None:
    extra = ["--learning_rate", "1e30", "--lr_scheduler", "constant", "--checkpointing_steps", "1"]
    extra += ["--mixed_precision", "bf16"]
    line = _one_error_line(train(flags(data, tmp_path / "run", *extra), expect_ok=False))
    # update 1 ruins the weights; update 2's loss, the first computed with them, is not finite
    assert "loss became" in line and "at step 2" in line and "No checkpoint was confirmed good yet" in line
    assert checkpoints(tmp_path / "run") == [] and not (tmp_path / "run" / "unet").exists()


def test_a_diverging_run_stops_and_leaves_the_last_good_checkpoint_and_model(data: Path, tmp_path: Path) -> None:
    # Warm-up from learning rate 0: update 1 leaves the weights as they are, update 2 (at 2.5e8) ruins them.
    extra = ["--learning_rate", "1e9", "--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "4"]
    extra += ["--checkpointing_steps", "1", "--checkpoints_total_limit", "1", "--validation_steps", "100"]
    run = tmp_path / "run"
    result = train(flags(data, run, *extra), expect_ok=False)
    line = _one_error_line(result)
    assert "Last good checkpoint: " + str(run / "checkpoint-1") in line and "learning rate" in line
    assert "published the model of checkpoint-1" in result.stdout + result.stderr
    assert ("loss diverged" in line and "more than 100x the median" in line) or "loss became" in line
    assert checkpoints(run) == [run / "checkpoint-1"]  # 2, 3, ... were saved, never confirmed, and deleted
    assert_complete(run / "checkpoint-1")
    one_step = tmp_path / "one_step"
    train(flags(data, one_step, *extra[:6], "--max_train_steps", "1", "--validation_steps", "100"))
    published, expected = (load_file(str(d / "unet" / "model.safetensors")) for d in (run, one_step))
    assert all(torch.equal(published[k], expected[k]) for k in expected)  # the model of step 1, as published then


def test_starting_over_existing_checkpoints_is_refused(
    reference: Path, data: Path, capsys: pytest.CaptureFixture
) -> None:
    assert "--resume_from_checkpoint latest" in error_in_process(flags(data, reference), capsys)


# ---------------------------------------------------------------------------------- helpers in process


def test_config_flags_override_yaml_and_bad_keys_are_refused(tmp_path: Path) -> None:
    run = parse_run_config(
        ["--config", "configs/tiny.yaml", "--learning_rate", "0.5", "--prediction_type", "v", "--no-use_ema",
         "--num_images", "1000", "--num_workers", "3"],
        "test",
    )
    assert run.training.learning_rate == 0.5 and run.training.use_ema is False
    assert run.data.num_images == 1000 and run.data.num_workers == 3
    assert run.model["diffusion"]["prediction"] == "v" and run.data.dataset_name == "shapes32"
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {dataset_name: shapes32}\ntraining: {learning_rat: 1.0}\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rat' in the training section.*learning_rate"):
        parse_run_config(["--config", str(bad)], "test")
    bad.write_text("data: {dataset_name: shapes32}\ntraining: {max_train_steps: many}\n")
    with pytest.raises(ConfigError, match="training.max_train_steps must be an integer"):
        parse_run_config(["--config", str(bad)], "test")


@pytest.mark.parametrize("name", ["cifar10", "laion_vitb32"])
def test_gpu_example_configs_parse(name: str) -> None:
    run = parse_run_config(["--config", f"configs/{name}.yaml"], "test")
    assert {"unet", "text_encoder", "diffusion", "sampling"} <= set(run.model)


def test_every_shipped_config_has_known_sections_and_a_misspelt_section_is_refused(tmp_path: Path) -> None:
    runs = (*MODEL_SECTIONS, "data", "training")
    for path in sorted(Path("configs").glob("*.yaml")):
        assert set(read_run_yaml(path)) <= set(runs), path
    emoji = parse_run_config(["--config", "configs/emoji32.yaml"], "test")
    sampling = SamplingConfig.from_dict(emoji.model["sampling"])
    shipped = SamplingConfig.from_dict(load_json(PRETRAINED_DIR / "emoji32" / PIPELINE_INDEX)["sampling"])
    assert (sampling.sampler, sampling.guidance_reads, sampling.classifier_scale_max) == (shipped.sampler, shipped.guidance_reads, shipped.classifier_scale_max) == ("ddim", "x0", 2000.0)
    (tmp_path / "typo.yaml").write_text(f"base: {Path('configs/tiny.yaml').resolve()}\nsampleing: {{steps: 4}}\n")
    with pytest.raises(ConfigError, match=rf"unknown section 'sampleing' in .*typo\.yaml; valid sections: {', '.join(runs)}$"):
        parse_run_config(["--config", str(tmp_path / "typo.yaml")], "test")


def test_a_config_with_a_base_changes_only_what_it_names(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("unet: {base_channels: 8, num_res_blocks: 2}\ntraining: {seed: 1, learning_rate: 0.1}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nunet: {num_res_blocks: 1}\nsampling: {steps: 4}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("base: ../b.yaml\ntraining: {seed: 3}\n")
    assert read_yaml(tmp_path / "sub" / "c.yaml") == {
        "unet": {"base_channels": 8, "num_res_blocks": 1},
        "training": {"seed": 3, "learning_rate": 0.1},
        "sampling": {"steps": 4},
    }
    (tmp_path / "a.yaml").write_text("text_encoder: {backend: open_clip, width: 8}\n")
    (tmp_path / "d.yaml").write_text("base: a.yaml\ntext_encoder: {from_pretrained: saved/text_encoder, trainable: false}\n")
    assert read_yaml(tmp_path / "d.yaml")["text_encoder"] == {"from_pretrained": "saved/text_encoder", "trainable": False}  # replaced
    (tmp_path / "a.yaml").write_text("base: sub/c.yaml\n")
    with pytest.raises(ConfigError, match=r"is its own base, through .*c\.yaml -> .*b\.yaml -> .*a\.yaml -> .*c\.yaml"):
        read_yaml(tmp_path / "sub" / "c.yaml")
    (tmp_path / "a.yaml").write_text("base: [x.yaml]\n")
    with pytest.raises(ConfigError, match=r"base in .*a\.yaml must be a config file name, got \['x\.yaml'\]"):
        read_yaml(tmp_path / "b.yaml")
    (tmp_path / "a.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*gone\.yaml"):
        read_yaml(tmp_path / "b.yaml")


def test_shapes32_long_config_is_the_shipped_models_recipe() -> None:
    """configs/shapes32_long.yaml rebuilds the shipped shapes32 UNet, diffusion and sampling exactly;
    configs/shapes32.yaml (the 40-minute recipe) differs in the residual blocks per level and the length."""
    shipped = GuidedDiffusionPipeline.from_pretrained("shapes32")
    long = parse_run_config(["--config", "configs/shapes32_long.yaml"], "test")
    fast = parse_run_config(["--config", "configs/shapes32.yaml"], "test")
    derived = {"text_dim": shipped.unet.config.text_dim, "out_channels": 3}  # from the text encoder, the variance
    assert {**long.model["unet"], **derived} == shipped.unet.config.to_dict()
    assert long.model["diffusion"] == shipped.diffusion_config
    assert SamplingConfig.from_dict(long.model["sampling"]) == shipped.sampling_config
    assert (long.training.max_train_steps, long.training.train_batch_size) == (7000, 32)
    assert {k: v for k, v in fast.model["unet"].items() if fast.model["unet"][k] != long.model["unet"][k]} == {"num_res_blocks": 1}
    assert fast.model["diffusion"] == long.model["diffusion"] and fast.model["sampling"] == long.model["sampling"]
    assert fast.training.max_train_steps == 3600


@pytest.mark.parametrize(
    ("configured", "launcher", "cuda", "bf16", "expected"),
    [
        (None, None, True, True, ("bf16", "the default on a CUDA device with bf16")),
        (None, None, True, False, ("no", "the default on a CUDA device without bf16")),
        (None, None, False, False, ("no", "the default off CUDA")),
        (None, "fp16", True, True, ("fp16", "accelerate's setting")),
        (None, "no", True, True, ("no", "accelerate's setting")),
        ("no", "bf16", True, True, ("no", "training.mixed_precision")),
        ("bf16", None, False, False, ("bf16", "training.mixed_precision")),
    ],
)
def test_mixed_precision_is_bf16_by_default_only_on_cuda_with_bf16(configured, launcher, cuda, bf16, expected) -> None:
    assert choose_mixed_precision(configured, launcher, cuda, bf16) == expected


def test_the_accelerator_logs_its_precision_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from accelerate.state import AcceleratorState

    config = TrainingConfig(output_dir=str(tmp_path))
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    for launcher, line in ((None, "no (the default off CUDA)"), ("bf16", "bf16 (accelerate's setting)")):
        if launcher is not None:
            monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
        try:
            assert make_accelerator(config).mixed_precision == (launcher or "no")
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
        assert f"mixed precision: {line}" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(
    ("compile_backend", "launcher", "expected"),
    [("eager", None, "EAGER"), (None, "AOT_EAGER", "AOT_EAGER"), ("inductor", "AOT_EAGER", "INDUCTOR"),
     (None, None, "NO")],
)
def test_training_compile_is_accelerates_configured_or_launched(
    compile_backend, launcher, expected, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accelerate.state import AcceleratorState

    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    if launcher is not None:
        monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", launcher)
    config = TrainingConfig(output_dir=str(tmp_path), compile=compile_backend is not None,
                            compile_backend=compile_backend or "inductor")
    try:
        assert make_accelerator(config).state.dynamo_plugin.backend.value == expected
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_compile_keys_are_checked() -> None:
    run = parse_run_config(["--config", "configs/tiny.yaml", "--compile", "--compile_backend", "aot_eager"], "test")
    assert run.training.compile is True and run.training.compile_backend == "aot_eager"
    with pytest.raises(ConfigError, match="unknown compile_backend 'inductr'; choose one of eager, aot_eager, inductor"):
        parse_run_config(["--config", "configs/tiny.yaml", "--compile", "--compile_backend", "inductr"], "test")


def test_ema_warmup_average_and_swap() -> None:
    module = torch.nn.Linear(2, 1)
    ema = EMA(module, decay=0.9, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)
    start = module.weight.detach().clone()
    with torch.no_grad():
        module.weight.add_(1.0)
    ema.update()
    assert torch.allclose(ema.shadow["weight"], start + 0.9)
    trained = module.weight.detach().clone()
    with ema.applied():
        assert torch.equal(module.weight, ema.shadow["weight"])
    assert torch.equal(module.weight, trained)


def _ema_age_spread(num_updates: int, **ema_options) -> float:
    """The standard deviation of the ages of the updates in an EMA after ``num_updates``, relative to
    ``num_updates``: a parameter holding ``[k - N, (k - N) ** 2]`` after update ``k`` averages to the
    first two moments of the averaged update's index."""
    module = torch.nn.Linear(2, 1, bias=False)
    ema = EMA(module, **ema_options)
    for k in range(1, num_updates + 1):
        with torch.no_grad():
            module.weight.copy_(torch.tensor([[k - num_updates, (k - num_updates) ** 2]], dtype=torch.float32))
        ema.update()
    mean, mean_square = ema.shadow["weight"][0].double().tolist()
    return (mean_square - mean**2) ** 0.5 / num_updates


@pytest.mark.parametrize("num_updates", [1200, 3600])
def test_ema_warmup_is_a_power_function_ema_of_a_tenth_of_the_run(num_updates: int) -> None:
    """With warm-up and a decay cap it has not reached, the average's length is EDM2's sigma_rel of the
    power-function EMA with exponent 8, 3 / (10 * 11 ** 0.5), whatever the run's length (train/ema.py)."""
    assert _ema_age_spread(num_updates, decay=0.999, warmup=True) == pytest.approx(3 / (10 * 11**0.5), rel=0.02)
    # past the cap (n = 9 / (1 - 0.98) - 10 = 440) the length is fixed: decay ** 0.5 / (1 - decay) updates
    assert _ema_age_spread(num_updates, decay=0.98, warmup=True) * num_updates == pytest.approx(0.98**0.5 / 0.02, rel=0.02)


def test_ema_without_warmup_uses_its_decay_from_the_first_update() -> None:
    module = torch.nn.Linear(2, 1)
    ema = EMA(module, decay=0.995, warmup=False)
    assert ema.current_decay() == 0.995
    assert _ema_age_spread(3600, decay=0.995, warmup=False) * 3600 == pytest.approx(0.995**0.5 / 0.005, rel=0.02)
    run = parse_run_config(["--config", "configs/tiny.yaml", "--no-ema_warmup", "--ema_decay", "0.995"], "test")
    assert run.training.ema_warmup is False and run.training.ema_decay == 0.995
    assert parse_run_config(["--config", "configs/tiny.yaml"], "test").training.ema_warmup is True


def _small_encoder(trainable: bool):
    return build_text_encoder(
        {"backend": "open_clip", "context_length": 8, "width": 16, "heads": 2, "layers": 1, "trainable": trainable}
    )


def test_cached_features_of_a_caption_do_not_depend_on_the_captions_it_missed_with() -> None:
    """Bit for bit, so that a resumed run (empty cache) trains on the features the uninterrupted one did;
    batch-encoded rows differ in the last bits with the batch size on some CPUs (AVX-512)."""
    config = {**read_yaml(REPO / "configs" / "tiny.yaml")["text_encoder"], "trainable": False}
    torch.manual_seed(0)
    encoder = build_text_encoder(config)
    captions = ["a red circle", "a big blue square in the top left", "a green triangle", "", "a small purple circle in the center"]
    together, _ = CachedTextFeatures(encoder, max_entries=16)(captions)
    for i in range(len(captions)):
        for missed_with in ([captions[i]], captions[i : i + 2], captions[i::-1]):
            alone, _ = CachedTextFeatures(encoder, max_entries=16)(missed_with)
            assert torch.equal(alone[0], together[i])


def test_frozen_features_are_cached_and_match_the_encoder() -> None:
    encoder = _small_encoder(trainable=False)
    cached = CachedTextFeatures(encoder, max_entries=2)
    captions = ["a red square", "", "a red square"]
    features, mask = cached(captions)
    direct_features, direct_mask = encoder.encode(captions)
    assert torch.allclose(features, direct_features, atol=1e-6) and torch.equal(mask, direct_mask)
    cached(["a blue square"])
    assert list(cached.cache) == ["a red square", "a blue square"]


def test_trainable_encoder_trains_inside_one_module() -> None:
    unet = torch.nn.Identity()
    conditioning = TextConditioning(unet, _small_encoder(trainable=True), cache_size=16)
    assert isinstance(conditioning.module, TextConditionedUNet)
    assert set(conditioning.model_kwargs(["a"], torch.device("cpu"))) == {"tokens"}
    frozen = TextConditioning(unet, _small_encoder(trainable=False), cache_size=16)
    assert frozen.module is unet
    assert set(frozen.model_kwargs(["a"], torch.device("cpu"))) == {"text_features", "text_mask"}


def test_a_misspelt_flag_is_refused_not_taken_for_the_flag_it_abbreviates(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_run_config(["--config", "configs/tiny.yaml", "--learning_rat", "3"], "test")
    assert exit_info.value.code == 2 and "unrecognized arguments: --learning_rat 3" in capsys.readouterr().err


def test_the_loss_weighting_and_timestep_sampling_keys_are_checked() -> None:
    run = parse_run_config(["--config", "configs/tiny.yaml", "--edm_sigma_data", "0.5", "--timestep_sampling", "log_normal",
                            "--log_normal_mean", "-1.0"], "test")
    assert (run.training.edm_sigma_data, run.training.timestep_sampling, run.training.log_normal_mean) == (0.5, "log_normal", -1.0)
    with pytest.raises(ConfigError, match="two loss weightings: set one of them"):
        DiffusionTrainingConfig(snr_gamma=5.0, edm_sigma_data=0.5)
    with pytest.raises(ConfigError, match="unknown timestep_sampling 'cosine'; choose one of uniform, log_normal"):
        DiffusionTrainingConfig(timestep_sampling="cosine")
    with pytest.raises(ConfigError, match="training.edm_sigma_data must be positive"):
        DiffusionTrainingConfig(edm_sigma_data=0.0)
