"""The Gradio demo of the toolkit (``python app.py``): pick a model, generate with live previews, watch
the forward process, read the model card. :class:`DemoModels` holds the models, :func:`build_demo`
makes the app, :func:`launch_demo` serves it, and :class:`SamplingBatcher` samples the requests of
concurrent users in batches."""

from .batching import SamplingBatcher
from .models import DemoModels
from .ui import build_demo, launch_demo

__all__ = ["DemoModels", "SamplingBatcher", "build_demo", "launch_demo"]
