"""gd-sample: writes a grid; user errors print one line and exit non-zero."""

import subprocess
import sys

from PIL import Image

from guided_diffusion.cli import sample_main


def test_gd_sample_writes_a_grid(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    status = sample_main(["--model", str(tiny_pipeline_dir), "a red circle", "a blue square", "-n", "3", "--steps", "3",
                          "--seed", "0", "--device", "cpu", "-o", str(out)])
    assert status == 0
    grid = Image.open(out)
    assert grid.size == (3 * 17 + 1, 2 * 17 + 1)
    assert "wrote 6 images" in capsys.readouterr().out


def test_a_user_error_exits_2_with_one_line_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "guided_diffusion.cli", "--model", str(tmp_path / "missing"), "x", "--device", "cpu"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gd-sample: error: no pipeline folder"), result.stderr


def test_user_errors_are_reported_in_one_line(tiny_pipeline_dir, tmp_path, capsys):
    cases = [
        (["x", "--label", "shape"], "ATTRIBUTE=CLASS"),
        (["x", "--classifier-scale", "2", "--label", "shape=circle"], "has no classifier"),
        (["x", "-o", str(tmp_path / "grid.jpg")], ".png"),
        (["x", "-n", "0"], "-n must be at least 1"),
        (["x", "--guidance-interval", "500", "100"], "guidance_interval must satisfy 0 <= t_low <= t_high"),
        (["x", "--clip-guidance-scale", "5"], "needs a pipeline with a noise-aware CLIP"),
        (["x", "--autoguidance", str(tmp_path / "nowhere")], "no pipeline folder"),
        (["x", "--sampler", "rk4"], "unknown sampler 'rk4'; choose one of ddpm, ddim"),
        (["x", "--cads-setting", "tau1=early"], "--cads-setting values must be numbers"),
        (["x", "--cads-setting", "tau3=0.5"], "unknown CADS setting 'tau3'"),
        (["x", "--classifier-max-t", "5000", "--classifier-scale", "1"], "classifier_max_t must be between 0 and 999"),
        (["x", "--thresholding", "2"], "thresholding must be between 0 and 1"),
    ]
    for argv, message in cases:
        status = sample_main(["--model", str(tiny_pipeline_dir), *argv, "--device", "cpu", "--steps", "2"])
        err = capsys.readouterr().err
        assert status == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gd-sample: error:") and message in lines[0], err
    assert sample_main(["--model", str(tiny_pipeline_dir), "x", "--device", "nonsense"]) == 2
    assert "'nonsense' is not a torch device" in capsys.readouterr().err


def test_gd_sample_takes_every_registered_sampler_and_schedule(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    status = sample_main(["--model", str(tiny_pipeline_dir), "a red circle", "-n", "2", "--steps", "3", "--sampler", "dpm++3m",
                          "--timestep-schedule", "log_snr", "--thresholding", "0.99", "--device", "cpu", "-o", str(out)])
    assert status == 0 and out.is_file()
    status = sample_main(["--model", str(tiny_pipeline_dir), "x", "--sampler", "heun", "--eta", "0.5", "--steps", "2", "--device", "cpu",
                          "-o", str(out)])
    assert status == 2 and "sampler 'heun' takes no option 'eta'; its options: none" in capsys.readouterr().err


def test_gd_sample_compiles_the_unet_and_reports_the_compile_time(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    status = sample_main(["--model", str(tiny_pipeline_dir), "a red circle", "-n", "2", "--steps", "3", "--seed", "0",
                          "--compile", "--compile-backend", "eager", "--device", "cpu", "-o", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert status == 0 and out.is_file()
    report = [line for line in lines if line.startswith("torch.compile (eager): about ")]
    assert len(report) == 1 and "median of the next 2" in report[0], lines
    status = sample_main(["--model", str(tiny_pipeline_dir), "x", "--compile", "--compile-backend", "nope",
                          "--device", "cpu", "-o", str(out)])
    assert status == 2 and "gd-sample: error: unknown compile backend 'nope'" in capsys.readouterr().err


def test_gd_sample_takes_every_guidance_option_of_the_api(tiny_pipeline_dir, tmp_path):
    def grid(*flags):
        out = tmp_path / f"grid{len(list(tmp_path.iterdir()))}.png"
        status = sample_main(["--model", str(tiny_pipeline_dir), "a red circle", "-n", "2", "--steps", "3", "--seed", "0",
                              "--device", "cpu", "-o", str(out), *flags])
        assert status == 0
        return Image.open(out).tobytes()

    plain = grid()
    assert grid("--guidance-interval", "0", "999") == plain
    assert grid("--guidance-interval", "0", "300") != plain
    assert grid("--cads") != plain
    assert grid("--autoguidance", str(tiny_pipeline_dir)) == grid("--guidance-scale", "1")  # guided by itself: no guidance


def test_gd_sample_guides_with_the_models_clip(tiny_pipeline_dir, tmp_path):
    from guided_diffusion import GuidedDiffusionPipeline

    from .test_guidance import tiny_clip

    pipe = GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.clip = tiny_clip().float()
    pipe.save_pretrained(tmp_path / "with_clip")

    def grid(*flags):
        out = tmp_path / f"grid{len(list(tmp_path.iterdir()))}.png"
        argv = ["--model", str(tmp_path / "with_clip"), "", "a red circle", "-n", "1", "--steps", "3", "--seed", "0", "--device", "cpu"]
        assert sample_main([*argv, "-o", str(out), *flags]) == 0
        return Image.open(out).tobytes()

    plain, steered = grid(), grid("--clip-guidance-scale", "50", "--clip-guidance-prompt", "a green triangle")
    assert steered != plain
    per_prompt = grid("--clip-guidance-scale", "50", "--clip-guidance-prompt", "a green triangle", "--clip-guidance-prompt", "a blue square")
    assert per_prompt != steered
    assert grid("--clip-guidance-scale", "50", "--clip-guidance-prompt", "a green triangle", "--clip-guidance-interval", "0", "999") == steered
    away = ("--clip-guidance-negative-prompt", "a red triangle", "--clip-guidance-negative-prompt", "a green square")
    contrastive = grid("--clip-guidance-scale", "50", "--clip-guidance-prompt", "a green triangle", *away)
    assert contrastive not in (steered, plain)
    assert grid("--clip-guidance-scale", "50", "--clip-guidance-prompt", "a green triangle", *away[:2], *away) == contrastive  # a repeated negative counts once
    through_x0 = grid("--clip-guidance-scale", "50", "--clip-guidance-prompt", "a green triangle", "--guidance-reads", "x0")
    assert through_x0 not in (steered, plain)


def test_gd_sample_takes_cads_settings_and_the_classifier_max_t(tiny_pipeline_dir, tmp_path):
    base = ["--model", str(tiny_pipeline_dir), "a red circle", "-n", "2", "--steps", "3", "--seed", "0", "--device", "cpu"]
    grids = {}
    for name, extra in {"plain": [], "cads": ["--cads"], "tuned": ["--cads-setting", "tau1=0.1", "--cads-setting", "noise_scale=1"]}.items():
        assert sample_main([*base, *extra, "-o", str(tmp_path / f"{name}.png")]) == 0
        grids[name] = Image.open(tmp_path / f"{name}.png").tobytes()
    assert len(set(grids.values())) == 3  # CADS changes the images, and its settings change them again


def test_gd_sample_exposes_every_option_of_the_pipeline_call():
    from guided_diffusion.cli import PASSED_ON
    from guided_diffusion.request import SamplingRequest

    by_their_own_flags = {"num_images_per_prompt", "num_inference_steps", "classifier_labels", "cads", "clip_guidance_prompt"}
    assert set(SamplingRequest.OPTIONS) - {"output_type"} == set(PASSED_ON) | by_their_own_flags  # it writes PNGs
