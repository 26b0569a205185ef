"""Neural networks: the text-conditioned UNet and its building blocks."""

from .unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
