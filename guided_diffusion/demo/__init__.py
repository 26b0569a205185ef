"""The Gradio demo of the toolkit (``python app.py``): pick a model, generate with live previews, watch
the forward process, read the model card. :class:`DemoModels` holds the models, :func:`build_demo`
makes the app, :func:`launch_demo` serves it."""

from .models import DemoModels
from .ui import build_demo, default_concurrency, launch_demo

__all__ = ["DemoModels", "build_demo", "default_concurrency", "launch_demo"]
