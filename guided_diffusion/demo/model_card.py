"""What the Model tab says about the loaded pipeline: its configuration, size, data and evaluation.

Everything here is shown to every visitor, so the model is named by its name in the picker, never by
its folder, and the documents and config pass through :func:`~guided_diffusion.demo.public.scrub_paths`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..pipeline import GuidedDiffusionPipeline
from .public import scrub_paths

NOT_AVAILABLE = "_Not available: the pipeline folder has no {name}._"


def _document(folder: Path | None, name: str) -> str:
    path = folder / name if folder is not None else None
    if path is None or not path.is_file():
        return NOT_AVAILABLE.format(name=name)
    return scrub_paths(path.read_text(encoding="utf-8", errors="replace"))


def parameter_table(pipe: GuidedDiffusionPipeline) -> str:
    """A Markdown table of the parameter count of each component, and their total."""
    counts = pipe.parameter_counts()
    rows = [f"| {name} | {count:,} |" for name, count in counts.items()]
    return "\n".join(["| component | parameters |", "| --- | ---: |", *rows, f"| **total** | **{sum(counts.values()):,}** |"])


def model_card(pipe: GuidedDiffusionPipeline, name: str) -> dict[str, str]:
    """Markdown sections for the Model tab of the model called ``name``: ``summary``, ``config`` (YAML),
    ``training`` (the README.md of ``pipe.folder``) and ``evaluation`` (its evaluation.md); the last two
    say "not available" when absent."""
    unet = pipe.unet.config
    classifier = (
        ", ".join(f"{attribute} ({', '.join(names)})" for attribute, names in pipe.classifier.labels.items())
        if pipe.classifier is not None
        else "none"
    )
    summary = "\n".join(
        [
            f"- **Model:** `{name}`",
            f"- **Images:** {unet.image_size}x{unet.image_size}, {unet.in_channels} channels",
            f"- **Text encoder:** {pipe.text_encoder.config['backend']}, context {pipe.text_encoder.context_length} tokens",
            f"- **Diffusion:** {pipe.diffusion!r}",
            f"- **Classifier labels:** {classifier}",
            f"- **Device:** {pipe.device}",
            "",
            parameter_table(pipe),
        ]
    )
    return {
        "summary": summary,
        "config": "```yaml\n" + scrub_paths(yaml.safe_dump(pipe.config, sort_keys=False)) + "```",
        "training": _document(pipe.folder, "README.md"),
        "evaluation": _document(pipe.folder, "evaluation.md"),
    }
