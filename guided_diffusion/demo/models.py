"""The models behind the demo's model picker: named pipelines, loaded when first picked and then kept.

:meth:`DemoModels.from_names` offers the pipeline folders or shipped model names it is given (the first
is the default) and then every other shipped model. A shipped model is named by its name; another
folder by its folder name, with "-2", "-3", ... when that name is already taken: never by its path,
which the picker would show to every visitor.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..errors import RequestError
from ..pipeline import GuidedDiffusionPipeline, resolve_pipeline_folder, shipped_models


class DemoModels:
    """Pipelines by name, in the picker's order; the first is the default.

    ``sources`` maps each name to a loaded pipeline or to a pipeline folder (or shipped model name),
    which is loaded onto ``device`` the first time it is asked for and kept from then on.
    """

    def __init__(
        self, sources: Mapping[str, GuidedDiffusionPipeline | str | os.PathLike], device: str | torch.device = "cpu"
    ) -> None:
        if not sources:
            raise RequestError("the demo needs at least one model")
        self._sources = dict(sources)
        self._loaded = {name: source for name, source in sources.items() if isinstance(source, GuidedDiffusionPipeline)}
        self._lock = threading.Lock()
        self.device = torch.device(device)

    @classmethod
    def from_names(cls, names_or_paths: Sequence[str | os.PathLike], device: str | torch.device = "cpu") -> "DemoModels":
        """The given pipeline folders or shipped model names, then every other shipped model. The given
        ones are loaded at once, so that a missing or broken one is refused here (``CheckpointError``)."""
        shipped = {resolve_pipeline_folder(name).resolve(): name for name in shipped_models()}
        candidates = [(str(given), resolve_pipeline_folder(given).resolve()) for given in names_or_paths]
        candidates += [(name, folder) for folder, name in shipped.items()]
        names: dict[Path, str] = {}
        for _, folder in candidates:
            if folder not in names:
                taken = {*names.values(), *shipped.values()}
                names[folder] = shipped.get(folder) or next(
                    name for name in (folder.name, *(f"{folder.name}-{i}" for i in range(2, len(candidates) + 2))) if name not in taken
                )
        models = cls({name: folder for folder, name in names.items()}, device)
        for _, folder in candidates[: len(names_or_paths)]:
            models.pipeline(names[folder])
        return models

    @property
    def names(self) -> list[str]:
        """Every model's name, the default first."""
        return list(self._sources)

    @property
    def default(self) -> str:
        """The name of the model the page starts with and the API uses when none is named."""
        return self.names[0]

    def pipeline(self, name: str) -> GuidedDiffusionPipeline:
        """The pipeline called ``name``, loaded on first use; ``ValueError`` for a name not offered."""
        if name not in self._sources:
            raise RequestError(f"unknown model {name!r}; choose one of {', '.join(self.names)}")
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = GuidedDiffusionPipeline.from_pretrained(self._sources[name], device=self.device)
            return self._loaded[name]
