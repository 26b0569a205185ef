"""The README's examples run as written: its Python blocks, and the newcomer's path from install to
sampling a model of one's own (the demo served, a training run, gd-sample on its output)."""

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .conftest import REPO
from .test_app import free_port

README = (REPO / "README.md").read_text()


def blocks(language: str) -> list[str]:
    """The README's fenced code blocks of ``language``, in order."""
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def section(title: str) -> str:
    """The README's section under ``## title``, up to the next ``## `` heading."""
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def commands(block: str) -> list[list[str]]:
    """The shell commands of a bash block, one per line, comments dropped."""
    return [shlex.split(line, comments=True) for line in block.strip().splitlines() if shlex.split(line, comments=True)]


def test_the_python_api_example_runs_as_written(tmp_path, monkeypatch):
    (example,) = re.findall(r"```python\n(.*?)```", section("Python API"), flags=re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md (Python API)", "exec"), namespace)
    assert len(namespace["images"]) == 4 and (tmp_path / "circle.png").is_file()
    assert namespace["array"].shape == (1, 32, 32, 3) and 0 <= namespace["array"].min() <= namespace["array"].max() <= 1


def test_the_demo_api_example_runs_against_a_served_demo():
    from guided_diffusion.demo import DemoModels, build_demo, launch_demo

    (example,) = re.findall(r"```python\n(.*?)```", section("Demo API"), flags=re.S)
    assert 'Client("http://127.0.0.1:7860/")' in example
    demo = build_demo(DemoModels.from_names(["shapes32"]))
    url = launch_demo(demo, port=free_port(), prevent_thread_lock=True)
    try:
        namespace: dict = {}
        exec(compile(example.replace("http://127.0.0.1:7860/", url), "README.md (Demo API)", "exec"), namespace)
    finally:
        demo.close()
    result = namespace["result"]
    assert len(result) == 4 and all(Path(item["image"]).is_file() for item in result)


def newcomer_steps() -> list[list[str]]:
    (block,) = re.findall(r"```bash\n(.*?)```", section("A first model of your own"), flags=re.S)
    steps = commands(block)
    assert [step[:3] for step in steps[:2]] == [["pip", "install", "-e"], ["python", "app.py"]]
    return steps


def test_the_newcomers_demo_step_serves_the_shipped_models():
    port = free_port()
    app = subprocess.Popen([sys.executable, *newcomer_steps()[1][1:], "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    assert page.status == 200 and "gradio" in page.read().decode().lower()
                    break
            except OSError:
                assert app.poll() is None, app.stdout.read()
                assert time.monotonic() < deadline, "the demo did not answer within 3 minutes"
                time.sleep(1)
    finally:
        app.terminate()
        app.wait(30)


def test_the_newcomers_training_run_and_sampling_run_as_written(tmp_path):
    """Steps 3 and 4, in a fresh folder holding the repository's configs (the training command is run
    from the repository's root in the README; here ``train`` is found on PYTHONPATH instead)."""
    assert shutil.which("gd-sample"), "gd-sample is installed by `pip install -e .`"
    train, sample = newcomer_steps()[2:]
    assert train[:3] == ["python", "-m", "train.diffusion"] and sample[0] == "gd-sample"
    (tmp_path / "configs").symlink_to(REPO / "configs")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    trained = subprocess.run([sys.executable, *train[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "outputs" / "first_run" / "pipeline.json").is_file()
    sampled = subprocess.run(sample, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert "wrote 4 images to first_run.png" in sampled.stdout and (tmp_path / "first_run.png").is_file()
