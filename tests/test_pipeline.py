"""GuidedDiffusionPipeline: sampling, seeding, guidance plumbing, save/load and refusals."""

import json
import os
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from guided_diffusion import GuidedDiffusionPipeline
from guided_diffusion.config import read_yaml
from guided_diffusion.errors import ConfigError, RequestError
from guided_diffusion.evaluation.sampling import EvalSampling
from guided_diffusion.request import SamplingConfig
from guided_diffusion.serialization import CheckpointError

from .conftest import TINY_CONFIG


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir)


def test_from_config_builds_the_configured_components():
    pipe = GuidedDiffusionPipeline.from_config(TINY_CONFIG)
    assert pipe.unet.config.image_size == 16
    assert pipe.unet.config.text_dim == pipe.text_encoder.width
    assert pipe.diffusion.num_timesteps == 1000
    counts = pipe.parameter_counts()
    assert 100_000 < counts["unet"] < 1_000_000
    assert set(pipe.config) == {"unet", "text_encoder", "diffusion", "sampling"}


def test_images_have_the_configured_size_and_same_seed_gives_same_images(pipe):
    images = pipe(["a red circle", "a blue square"], num_images_per_prompt=2, num_inference_steps=5, seed=1).images
    assert len(images) == 4 and all(isinstance(im, Image.Image) and im.size == (16, 16) for im in images)
    again = pipe(["a red circle", "a blue square"], num_images_per_prompt=2, num_inference_steps=5, seed=1).images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, again))
    other = pipe(["a red circle", "a blue square"], num_images_per_prompt=2, num_inference_steps=5, seed=2).images
    assert not np.array_equal(np.asarray(images[0]), np.asarray(other[0]))


@pytest.mark.parametrize("sampler, schedule", [("ddpm", "uniform"), ("ddim", "trailing"), ("dpm++", "karras"), ("dpm++3m", "log_snr"), ("heun", "karras")])
def test_output_types_agree_and_the_callback_sees_every_step(pipe, sampler, schedule):
    seen = []
    kwargs = dict(num_inference_steps=4, sampler=sampler, timestep_schedule=schedule, seed=0)
    tensor = pipe("a circle", **kwargs, output_type="pt", callback=lambda *a: seen.append(a)).images
    assert tensor.shape == (1, 3, 16, 16) and 0 <= tensor.min() and tensor.max() <= 1
    array = pipe("a circle", **kwargs, output_type="np").images
    assert array.dtype == np.float32 and array.shape == (1, 16, 16, 3)  # as diffusers: floats in [0, 1]
    np.testing.assert_array_equal(array[0], tensor[0].permute(1, 2, 0).numpy())
    pil = pipe("a circle", **kwargs).images
    np.testing.assert_array_equal(np.asarray(pil[0]), (tensor[0].permute(1, 2, 0) * 255).round().byte().numpy())
    (as_tuple,) = pipe("a circle", **kwargs, output_type="pt", return_dict=False)
    assert torch.equal(as_tuple, tensor)
    assert [s[0] for s in seen] == [0, 1, 2, 3] and all(s[1] == 4 for s in seen)
    assert seen[-1][2].shape == seen[-1][3].shape == (1, 3, 16, 16)


def test_prompt_and_guidance_scale_change_the_images(pipe):
    a = pipe("a red circle", num_inference_steps=5, seed=0, output_type="pt").images
    b = pipe("a blue square", num_inference_steps=5, seed=0, output_type="pt").images
    assert not torch.allclose(a, b)
    plain = pipe("a red circle", num_inference_steps=5, seed=0, guidance_scale=1.0, output_type="pt").images
    assert not torch.allclose(a, plain)
    uncond_a = pipe("a red circle", num_inference_steps=5, seed=0, guidance_scale=0.0, output_type="pt").images
    uncond_b = pipe("a blue square", num_inference_steps=5, seed=0, guidance_scale=0.0, output_type="pt").images
    torch.testing.assert_close(uncond_a, uncond_b)
    empty = pipe("", num_inference_steps=5, seed=0, guidance_scale=1.0, output_type="pt").images
    torch.testing.assert_close(uncond_a, empty)


def test_empty_prompts_skip_the_doubled_classifier_free_forward(pipe):
    batches = []
    hook = pipe.unet.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        guided = pipe(["", ""], num_inference_steps=3, seed=0, guidance_scale=3.0, output_type="pt").images
        assert batches == [2, 2, 2]
        pipe(["", "a red circle"], num_inference_steps=3, seed=0, guidance_scale=3.0, output_type="pt")
        assert batches[3:] == [4, 4, 4]
    finally:
        hook.remove()
    torch.testing.assert_close(guided, pipe(["", ""], num_inference_steps=3, seed=0, guidance_scale=1.0, output_type="pt").images)


def test_save_and_load_reproduce_images_exactly(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "copy")
    loaded = GuidedDiffusionPipeline.from_pretrained(tmp_path / "copy")
    assert loaded.config == pipe.config
    first = pipe(["a small blue triangle in the top right"], num_inference_steps=6, seed=3, output_type="pt").images
    second = loaded(["a small blue triangle in the top right"], num_inference_steps=6, seed=3, output_type="pt").images
    assert torch.equal(first, second)


def test_example_prompts_round_trip_through_the_folder(pipe, tmp_path):
    assert pipe.example_prompts == []  # none unless given
    prompts = ["a red circle", "a blue square in the top left"]
    pipe.save_pretrained(tmp_path / "plain")
    assert GuidedDiffusionPipeline.from_pretrained(tmp_path / "plain").example_prompts == []
    with_examples = GuidedDiffusionPipeline(pipe.unet, pipe.text_encoder, pipe.diffusion_config, example_prompts=prompts)
    with_examples.save_pretrained(tmp_path / "examples")
    assert json.loads((tmp_path / "examples" / "pipeline.json").read_text())["example_prompts"] == prompts
    loaded = GuidedDiffusionPipeline.from_pretrained(tmp_path / "examples")
    assert loaded.example_prompts == prompts
    loaded.save_pretrained(tmp_path / "examples")  # a re-save (e.g. attaching a classifier) keeps them
    assert GuidedDiffusionPipeline.from_pretrained(tmp_path / "examples").example_prompts == prompts
    with pytest.raises(ValueError, match="example_prompts must be a list of strings"):
        GuidedDiffusionPipeline(pipe.unet, pipe.text_encoder, pipe.diffusion_config, example_prompts="a red circle")


def test_bad_index_entries_are_refused_by_name(tiny_pipeline_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_pipeline_dir, folder)
    index = json.loads((folder / "pipeline.json").read_text())
    (folder / "pipeline.json").write_text(json.dumps({**index, "example_prompt": ["a red circle"]}))
    with pytest.raises(CheckpointError, match=r"pipeline\.json has unknown entries \['example_prompt'\]; valid entries: .*example_prompts"):
        GuidedDiffusionPipeline.from_pretrained(folder)
    (folder / "pipeline.json").write_text(json.dumps({**index, "example_prompts": [1, 2]}))
    with pytest.raises(CheckpointError, match="example_prompts must be a list of strings"):
        GuidedDiffusionPipeline.from_pretrained(folder)


def test_missing_and_corrupt_files_are_refused_by_name(tiny_pipeline_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline_dir, broken)
    (broken / "unet" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"unet/model\.safetensors"):
        GuidedDiffusionPipeline.from_pretrained(broken)
    (broken / "unet" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing file: .*unet/model\.safetensors"):
        GuidedDiffusionPipeline.from_pretrained(broken)
    shutil.rmtree(broken / "text_encoder")
    shutil.copytree(tiny_pipeline_dir / "unet", broken / "unet", dirs_exist_ok=True)
    with pytest.raises(CheckpointError, match="text_encoder"):
        GuidedDiffusionPipeline.from_pretrained(broken)
    (broken / "pipeline.json").write_text("{ truncated")
    with pytest.raises(CheckpointError, match=r"corrupt JSON file .*pipeline\.json"):
        GuidedDiffusionPipeline.from_pretrained(broken)
    with pytest.raises(CheckpointError, match="no pipeline folder 'nowhere'"):
        GuidedDiffusionPipeline.from_pretrained("nowhere")


def test_bad_arguments_are_refused(pipe):
    with pytest.raises(ValueError, match="string or a non-empty list"):
        pipe([])
    with pytest.raises(ValueError, match="unknown sampler 'rk4'; choose one of ddpm, ddim, euler, heun, dpm"):
        pipe("a circle", sampler="rk4")
    with pytest.raises(ValueError, match="unknown timestep schedule 'cosine'; choose one of uniform, trailing, karras, log_snr"):
        pipe("a circle", timestep_schedule="cosine")
    with pytest.raises(ValueError, match="sampler 'heun' takes no option 'eta'; its options: none"):
        pipe("a circle", sampler="heun", eta=0.5)
    with pytest.raises(ValueError, match="has no classifier"):
        pipe("a circle", classifier_scale=2.0, classifier_labels={"shape": "circle"})
    with pytest.raises(ValueError, match="between 1 and 1000"):
        pipe("a circle", num_inference_steps=0)
    with pytest.raises(ValueError, match="thresholding must be a quantile above 0 and at most 1"):
        pipe("a circle", thresholding=0)
    with pytest.raises(ValueError, match="unknown key 'steps' in the diffusion section; valid keys: num_timesteps, beta_schedule"):
        GuidedDiffusionPipeline.from_config({**GuidedDiffusionPipeline.from_config(TINY_CONFIG).config, "diffusion": {"steps": 3}})


def test_training_mode_is_restored_after_sampling(pipe):
    pipe.unet.train()
    pipe("a circle", num_inference_steps=2, seed=0)
    assert pipe.unet.training
    pipe.unet.eval()


def test_half_precision_storage_halves_the_files_and_loads_the_rounded_weights(tiny_pipeline_dir, tmp_path):
    import shutil

    from guided_diffusion.serialization import store_half_precision

    folder = tmp_path / "half"
    shutil.copytree(tiny_pipeline_dir, folder)
    before = {p.relative_to(folder): p.stat().st_size for p in folder.rglob("model.safetensors")}
    rewritten = store_half_precision(folder)
    assert sorted(p.relative_to(folder) for p in rewritten) == sorted(before)
    for path in rewritten:
        assert path.stat().st_size < 0.55 * before[path.relative_to(folder)]
    original = GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    half = GuidedDiffusionPipeline.from_pretrained(folder)
    for (name, a), b in zip(original.unet.state_dict().items(), half.unet.state_dict().values()):
        assert b.dtype == torch.float32 and torch.equal(b, a.half().float()), name


def test_the_sampling_config_chooses_sampler_schedule_and_eta_and_round_trips(pipe, tmp_path):
    sde = GuidedDiffusionPipeline(
        pipe.unet, pipe.text_encoder, pipe.diffusion_config,
        sampling_config={"sampler": "dpm++2m-sde", "timestep_schedule": "karras", "steps": 4},
    )
    sde.save_pretrained(tmp_path / "sde")
    loaded = GuidedDiffusionPipeline.from_pretrained(tmp_path / "sde")
    assert loaded.sampling_config == sde.sampling_config and loaded.sampling_config.eta is None
    default = loaded("a red circle", seed=0, output_type="pt").images
    explicit = pipe("a red circle", sampler="dpm++2m-sde", timestep_schedule="karras", num_inference_steps=4, seed=0, output_type="pt").images
    assert torch.equal(default, explicit)  # eta None: the sampler's own default (1, the SDE)
    assert not torch.equal(default, loaded("a red circle", seed=1, output_type="pt").images)
    ode = loaded("a red circle", seed=0, eta=0.0, output_type="pt").images  # no noise: DPM-Solver++(2M)
    torch.testing.assert_close(ode, loaded("a red circle", sampler="dpm++", seed=0, output_type="pt").images, rtol=0, atol=1e-5)
    old = GuidedDiffusionPipeline(pipe.unet, pipe.text_encoder, pipe.diffusion_config, sampling_config={"sampler": "ddpm", "eta": 0.0})
    assert old.sampling_config.timestep_schedule == "uniform"  # configs saved before schedules existed
    assert torch.equal(old("a red circle", num_inference_steps=3, seed=0, output_type="pt").images, pipe("a red circle", sampler="ddpm", num_inference_steps=3, seed=0, output_type="pt").images)


def test_a_configs_eta_goes_to_the_samplers_that_take_it_and_no_other():
    ddim = SamplingConfig(sampler="ddim", eta=0.3)
    assert ddim.sampler_settings("ddim") == {"eta": 0.3} and ddim.sampler_settings("heun") == {}
    assert SamplingConfig(sampler="ddim").sampler_settings("ddim") == {}
    assert EvalSampling(sampler="ddim", eta=0.3).kwargs()["eta"] == 0.3
    assert "eta" not in EvalSampling(sampler="heun", eta=0.3).kwargs()


@pytest.mark.parametrize("bad", [0.0, -5.0, float("inf"), float("nan")])
def test_a_configs_classifier_scale_range_must_be_a_positive_number(bad):
    assert SamplingConfig(classifier_scale_max=800.0).classifier_scale_max == 800.0
    with pytest.raises(ConfigError, match=f"sampling.classifier_scale_max must be a finite number above 0, got {bad}"):
        SamplingConfig(classifier_scale_max=bad)


def require_inductor_toolchain() -> None:
    """Inductor compiles C++ for the CPU: it needs a C++ compiler ($CXX, else g++) and Python's headers.
    Fail, naming the fix, rather than skip when either is missing."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        pytest.fail(f"torch.compile's inductor backend needs a C++ compiler: no {compiler} on PATH (apt-get install g++)")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        pytest.fail("torch.compile's inductor backend needs Python's C headers (Python.h); install python3-dev")


def test_a_pipeline_compiled_with_inductor_samples_the_same_images(tmp_path):
    require_inductor_toolchain()
    config = yaml.safe_load(TINY_CONFIG.read_text())  # shrunk: inductor compiles a small graph in ~20 s here
    config["unet"].update(image_size=8, base_channels=8, channel_mult=[1], attention_resolutions=[])
    torch.manual_seed(0)
    pipe = GuidedDiffusionPipeline.from_config(config)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    prompts = ["a red circle", "a blue square"]
    expected = pipe(prompts, num_inference_steps=3, seed=0, output_type="pt").images
    keys = list(pipe.unet.state_dict())
    assert pipe.compile() is pipe
    torch.testing.assert_close(pipe(prompts, num_inference_steps=3, seed=0, output_type="pt").images, expected, rtol=0, atol=1e-3)
    assert list(pipe.unet.state_dict()) == keys
    pipe.save_pretrained(tmp_path / "saved")
    loaded = GuidedDiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert torch.equal(loaded(prompts, num_inference_steps=3, seed=0, output_type="pt").images, expected)


def test_an_unknown_compile_backend_is_refused_with_the_known_ones(pipe):
    with pytest.raises(ValueError, match="unknown compile backend 'inductr'; choose one of .*inductor"):
        pipe.compile(backend="inductr")


# ------------------------------------------------------------------------------------- issue 15's seams

TINY_CLASSIFIER = {"image_size": 16, "base_channels": 16, "channel_mult": [1, 2], "attention_resolutions": [8], "num_heads": 2,
                   "labels": {"shape": ["circle", "square"], "color": ["red", "blue", "green"]}}
TINY_CLIP = {"image_size": 16, "embed_dim": 16, "base_channels": 16, "channel_mult": [1, 2], "attention_resolutions": [8], "num_heads": 2,
             "text_encoder": {"backend": "open_clip", "context_length": 16, "width": 32, "heads": 2, "layers": 1}}


def test_from_config_of_a_pipeline_config_rebuilds_every_component(tmp_path):
    config = {**read_yaml(TINY_CONFIG), "classifier": TINY_CLASSIFIER, "clip": TINY_CLIP, "sampling": {"sampler": "heun", "steps": 7}}
    pipe = GuidedDiffusionPipeline.from_config(config)
    assert pipe.classifier.labels == TINY_CLASSIFIER["labels"] and pipe.clip.config.embed_dim == 16
    assert (pipe.sampling_config.sampler, pipe.sampling_config.steps) == ("heun", 7)
    again = GuidedDiffusionPipeline.from_config(pipe.config)
    assert again.config == pipe.config
    for name in ("unet", "text_encoder", "classifier", "clip"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours)
    pipe.save_pretrained(tmp_path / "full")
    assert GuidedDiffusionPipeline.from_pretrained(tmp_path / "full").config == pipe.config


def test_restricting_the_vocabulary_keeps_the_samples_and_shrinks_the_saved_towers(tiny_pipeline_dir, tmp_path):
    from guided_diffusion.models.clip import CLIPConfig, NoiseAwareCLIP

    pipe = GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    torch.manual_seed(0)
    pipe.clip = NoiseAwareCLIP(CLIPConfig.from_dict(TINY_CLIP)).eval()
    prompts, call = ["a red circle", "a blue square"], {"num_inference_steps": 3, "seed": 0, "output_type": "pt", "clip_guidance_scale": 20.0}
    expected = pipe(prompts, **call).images
    pipe.save_pretrained(tmp_path / "full")
    kept = pipe.restrict_vocabulary(["a red circle", "a blue square", "a green triangle"])
    assert kept == {"text_encoder": 10, "clip": 10}  # 7 words, start, end and pad
    assert torch.equal(pipe(prompts, **call).images, expected)
    pipe.save_pretrained(tmp_path / "small")
    loaded = GuidedDiffusionPipeline.from_pretrained(tmp_path / "small")
    assert loaded.clip.config.text_encoder["vocabulary"] == loaded.text_encoder.vocabulary == pipe.text_encoder.vocabulary
    assert torch.equal(loaded(prompts, **call).images, expected)
    for tower, width in (("text_encoder", 64), ("clip", 32)):
        full, small = ((tmp_path / size / tower / "model.safetensors").stat().st_size for size in ("full", "small"))
        assert abs(full - small - (49408 - 11) * width * 4) < 1024  # the rows dropped, give or take the header


def test_the_diffusion_process_is_a_saved_component_and_version_1_folders_still_load(tiny_pipeline_dir, tmp_path):
    pipe = GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.save_pretrained(tmp_path / "v2")
    index = json.loads((tmp_path / "v2" / "pipeline.json").read_text())
    assert index["format_version"] == 2 and index["diffusion"] == "diffusion"
    assert json.loads((tmp_path / "v2" / "diffusion" / "config.json").read_text()) == pipe.diffusion_config
    expected = pipe("a red circle", num_inference_steps=3, seed=0, output_type="pt").images
    # a folder written before the diffusion became a component: its settings inside pipeline.json
    shutil.copytree(tmp_path / "v2", tmp_path / "v1")
    shutil.rmtree(tmp_path / "v1" / "diffusion")
    (tmp_path / "v1" / "pipeline.json").write_text(json.dumps({**index, "format_version": 1, "diffusion": pipe.diffusion_config}))
    old = GuidedDiffusionPipeline.from_pretrained(tmp_path / "v1")
    assert torch.equal(old("a red circle", num_inference_steps=3, seed=0, output_type="pt").images, expected)
    (tmp_path / "v2" / "diffusion" / "config.json").write_text('{"num_timesteps": 1000, "schedule": "linear"}')
    with pytest.raises(CheckpointError, match=r"diffusion/config.json.*unknown key 'schedule'"):
        GuidedDiffusionPipeline.from_pretrained(tmp_path / "v2")
    (tmp_path / "v1" / "pipeline.json").write_text(json.dumps({**index, "format_version": 3}))
    with pytest.raises(CheckpointError, match="format version 3.*upgrade guided_diffusion"):
        GuidedDiffusionPipeline.from_pretrained(tmp_path / "v1")


def test_from_pretrained_takes_torch_dtype_and_device(tiny_pipeline_dir):
    pipe = GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype=torch.float64, device="cpu")
    assert pipe.dtype == torch.float64 and pipe.device == torch.device("cpu")
    assert all(p.dtype == torch.float64 for p in pipe.text_encoder.parameters())
    images = pipe("a red circle", num_inference_steps=2, seed=0, output_type="pt").images
    assert images.dtype == torch.float32 and images.shape == (1, 3, 16, 16)
    with pytest.raises(RequestError, match="torch_dtype must be a floating torch dtype"):
        GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype=torch.int8)
    with pytest.raises(RequestError, match="'nonsense' is not a torch device"):
        GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir, device="nonsense")


def test_the_public_api_exports_what_users_call():
    import guided_diffusion

    for name in ("GuidedDiffusionPipeline", "GaussianDiffusion", "UNet", "NoiseAwareClassifier", "sample", "classifier_cond_fn",
                 "ClassifierFreeGuidance", "CheckpointError", "UserError", "__version__"):
        assert name in guided_diffusion.__all__ and getattr(guided_diffusion, name) is not None
    assert "normal_kl" not in guided_diffusion.__all__ and not hasattr(guided_diffusion, "discretized_gaussian_log_likelihood")
    assert issubclass(CheckpointError, guided_diffusion.UserError) and issubclass(RequestError, ValueError)


def test_the_call_passes_every_option_of_the_one_request_check():
    import inspect

    from guided_diffusion.request import SamplingRequest

    parameters = inspect.signature(GuidedDiffusionPipeline.__call__).parameters
    assert all(parameters[name].default == default for name, default in SamplingRequest.OPTIONS.items())
    with pytest.raises(RequestError, match="unknown sampling option 'step'; valid options: num_images_per_prompt"):
        SamplingRequest.check(GuidedDiffusionPipeline.from_config(TINY_CONFIG), "a circle", step=3)


def test_a_learned_range_pipeline_trains_saves_loads_and_samples(tmp_path):
    config = read_yaml(TINY_CONFIG)
    config["diffusion"] = {**config["diffusion"], "variance": "learned_range"}
    with pytest.raises(ValueError, match=r"unet.out_channels is 3, but a diffusion with variance 'learned_range' needs 6 \(twice unet.in_channels\)"):
        GuidedDiffusionPipeline.from_config(config)
    config["unet"] = {**config["unet"], "out_channels": 6}
    torch.manual_seed(0)
    pipe = GuidedDiffusionPipeline.from_config(config)
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    features, mask = pipe.text_encoder.encode(["a red circle", ""])
    terms = pipe.diffusion.training_losses(pipe.unet, x0, torch.tensor([10, 900]), {"text_features": features, "text_mask": mask})
    terms["loss"].mean().backward()
    assert terms["vb"].shape == (2,) and torch.isfinite(terms["loss"]).all()
    assert pipe.unet.out_conv.weight.grad[3:].abs().sum() > 0  # the variance channels learn
    pipe.save_pretrained(tmp_path / "learned")
    loaded = GuidedDiffusionPipeline.from_pretrained(tmp_path / "learned")
    assert loaded.diffusion.variance == "learned_range" and loaded.unet.config.out_channels == 6
    for sampler in ("ddpm", "dpm++"):
        images = loaded("a red circle", num_inference_steps=3, sampler=sampler, seed=0, output_type="pt").images
        assert images.shape == (1, 3, 16, 16)
        assert torch.equal(images, pipe("a red circle", num_inference_steps=3, sampler=sampler, seed=0, output_type="pt").images)
