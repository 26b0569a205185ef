"""The Gradio demo of the toolkit (``python app.py``): generate with live previews, watch the
forward process, read the model card. :func:`build_demo` makes the app, :func:`launch_demo` serves it."""

from .ui import build_demo, default_concurrency, launch_demo

__all__ = ["build_demo", "default_concurrency", "launch_demo"]
