"""The noise-aware classifier p(y | x_t, t) of classifier guidance (Dhariwal & Nichol 2021, "Diffusion
Models Beat GANs on Image Synthesis", Sec. 4: sampling adds ``s * Sigma grad_x log p(y | x_t, t)`` to the
posterior mean, their Algorithm 1).

It is the encoder half of the UNet (the same timestep embedding, residual blocks and self-attention),
followed by attention pooling over the final feature map and one linear head per label attribute
(e.g. ``shape`` and ``color``), so one network serves several guidance targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, PretrainedModel
from .layers import ConditionedSequential, Downsample, ResBlock, SelfAttention, normalization, timestep_embedding


@dataclass
class NoisyEncoderConfig(ModelConfig):
    """Architecture of a :class:`NoisyImageEncoder` (the trunk of the classifier and of the CLIP's
    image tower): widths ``channel_mult[i] * base_channels``, ``num_res_blocks`` per level,
    self-attention at the feature-map sizes in ``attention_resolutions``."""

    image_size: int
    in_channels: int = 3
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (8,)
    num_heads: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        name = type(self).__name__
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(f"{name}.image_size ({self.image_size}) must be divisible by 2 ** (len(channel_mult) - 1)")
        for mult in self.channel_mult:
            if (mult * self.base_channels) % self.num_heads:
                raise ValueError(f"every level width must be divisible by {name}.num_heads ({self.num_heads})")


@dataclass
class ClassifierConfig(NoisyEncoderConfig):
    """Architecture and labels of :class:`NoiseAwareClassifier`.

    ``labels`` maps each attribute to its class names, in the order of the head's logits.
    """

    section = "classifier"

    labels: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.labels = {str(k): [str(n) for n in v] for k, v in self.labels.items()}
        if not self.labels or any(len(names) < 2 for names in self.labels.values()):
            raise ValueError("ClassifierConfig.labels must map each attribute to at least two class names")
        if any(len(set(names)) != len(names) for names in self.labels.values()):
            raise ValueError("ClassifierConfig.labels has a repeated class name")


class AttentionPool(nn.Module):
    """Pool a feature map [B, C, H, W] to [B, C]: the mean token, with a learned positional embedding,
    attends over all positions (the attention pooling of CLIP's ResNet image encoders, Radford et al.
    2021, "Learning Transferable Visual Models From Natural Language Supervision", Sec. 2.4)."""

    def __init__(self, channels: int, positions: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.position = nn.Parameter(torch.randn(positions + 1, channels) / channels**0.5)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + self.position.to(x.dtype)
        b, n, c = tokens.shape
        q, k, v = self.qkv(tokens).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        pooled = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # [B, heads, 1, C/heads]
        return self.proj(pooled.transpose(1, 2).reshape(b, c))


class NoisyImageEncoder(nn.Module):
    """The shared trunk of the noise-aware networks: ``features(x_t [B, C, H, W], t [B]) -> [B, width]``.

    The UNet's encoder half (timestep embedding, residual blocks, self-attention at
    ``config.attention_resolutions``, a middle block) followed by attention pooling; ``width`` is the
    pooled size.
    """

    def __init__(self, config: NoisyEncoderConfig) -> None:
        super().__init__()
        base = config.base_channels
        self.base_channels = base
        emb_dim = 4 * base
        self.time_embed = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        blocks: list[nn.Module] = [nn.Conv2d(config.in_channels, base, 3, padding=1)]
        ch, resolution = base, config.image_size
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                blocks.append(ResBlock(ch, mult * base, emb_dim, config.dropout))
                ch = mult * base
                if resolution in config.attention_resolutions:
                    blocks.append(SelfAttention(ch, config.num_heads))
            if level != len(config.channel_mult) - 1:
                blocks.append(Downsample(ch))
                resolution //= 2
        blocks += [ResBlock(ch, ch, emb_dim, config.dropout), SelfAttention(ch, config.num_heads), ResBlock(ch, ch, emb_dim, config.dropout)]
        self.encoder = ConditionedSequential(*blocks)
        self.out_norm = nn.Sequential(normalization(ch), nn.SiLU())
        self.pool = AttentionPool(ch, resolution * resolution, config.num_heads)
        self.width = ch

    def features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` at timesteps ``t [B]`` (original 0..T-1 scale) -> pooled ``[B, width]``."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.base_channels).to(x.dtype))
        return self.pool(self.out_norm(self.encoder(x, emb)))


class NoiseAwareClassifier(PretrainedModel, NoisyImageEncoder):
    """Classifies noisy images: ``forward(x_t [B, C, H, W], t [B]) -> {attribute: logits [B, K]}``.

    ``t`` is on the original 0..T-1 scale, as for the UNet. ``labels`` maps each attribute to its
    class names.
    """

    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__(config)
        self.config = config
        self.heads = nn.ModuleDict({attribute: nn.Linear(self.width, len(names)) for attribute, names in config.labels.items()})

    @property
    def labels(self) -> dict[str, list[str]]:
        """Attribute -> class names, in logit order."""
        return self.config.labels

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [B, C, H, W]``, ``t [B]`` -> ``{attribute: logits [B, K_attribute]}``."""
        pooled = self.features(x, t)
        return {attribute: head(pooled) for attribute, head in self.heads.items()}
