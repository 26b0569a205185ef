import json
from pathlib import Path

import pytest
import torch
import yaml

from guided_diffusion.models import UNet, UNetConfig
from guided_diffusion.models.layers import CrossAttention, timestep_embedding
from guided_diffusion.serialization import CheckpointError

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
TEXT_DIM = 16


def tiny_config(**overrides) -> UNetConfig:
    section = yaml.safe_load(TINY_YAML.read_text())["unet"]
    return UNetConfig.from_dict({**section, "text_dim": TEXT_DIM, **overrides})


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Give the zero-initialised parameters random values, as training would."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(std=0.1)
    return model.eval()


def inputs(batch: int = 2, size: int = 16, channels: int = 3, length: int = 6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    features = torch.randn(batch, length, TEXT_DIM, generator=g)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, :3] = True
    return x, t, features, mask


@pytest.fixture(scope="module")
def trained_unet() -> UNet:
    return randomize(UNet(tiny_config()))


def test_timestep_embedding_shape_and_float_t():
    emb = timestep_embedding(torch.tensor([0, 999]), 7)
    assert emb.shape == (2, 7)
    assert torch.allclose(emb[0, :3], torch.ones(3))  # cos(0) = 1
    assert timestep_embedding(torch.tensor([0.5, 10.25]), 8).shape == (2, 8)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"in_channels": 1, "out_channels": 2, "channel_mult": [1, 2, 2], "attention_resolutions": [4], "num_res_blocks": 2},
    ],
)
def test_output_shape_matches_input_and_is_zero_at_init(overrides):
    config = tiny_config(**overrides)
    unet = UNet(config)
    x, t, features, mask = inputs(channels=config.in_channels)
    out = unet(x, t, text_features=features, text_mask=mask)
    assert out.shape == (2, config.out_channels, 16, 16)
    assert torch.count_nonzero(out) == 0
    assert unet(x, t).shape == out.shape  # unconditional


def test_output_depends_on_t_and_text(trained_unet):
    x, t, features, mask = inputs()
    with torch.no_grad():
        base = trained_unet(x, t, features, mask)
        assert not torch.allclose(base, trained_unet(x, t + 1, features, mask))
        assert not torch.allclose(base, trained_unet(x, t, features + 1.0, mask))
        assert not torch.allclose(base, trained_unet(x, t))
        assert torch.allclose(base, trained_unet(x, t.float(), features, mask))


def test_masked_positions_are_ignored(trained_unet):
    x, t, features, mask = inputs()
    changed = features.clone()
    changed[~mask] = torch.randn_like(changed[~mask]) * 10
    with torch.no_grad():
        assert torch.equal(trained_unet(x, t, features, mask), trained_unet(x, t, changed, mask))
        full = torch.ones_like(mask)
        assert torch.allclose(trained_unet(x, t, features, full), trained_unet(x, t, features, None), atol=1e-4)


def test_row_without_tokens_is_finite_with_finite_gradients(trained_unet):
    x, t, features, mask = inputs()
    mask[1] = False
    features.requires_grad_(True)
    out = trained_unet(x, t, features, mask)
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(features.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in trained_unet.parameters() if p.grad is not None)
    trained_unet.zero_grad(set_to_none=True)


def test_cross_attention_without_tokens_is_identity():
    block = randomize(CrossAttention(8, context_dim=4, num_heads=2))
    x = torch.randn(2, 8, 3, 3)
    out = block(x, torch.randn(2, 5, 4), torch.zeros(2, 5, dtype=torch.bool))
    assert torch.equal(out, x)


def test_save_load_round_trip(tmp_path, trained_unet):
    trained_unet.save_pretrained(tmp_path / "unet")
    assert json.loads((tmp_path / "unet" / "config.json").read_text()) == trained_unet.config.to_dict()
    loaded = UNet.from_pretrained(tmp_path / "unet")
    assert loaded.config == trained_unet.config
    x, t, features, mask = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, features, mask), trained_unet(x, t, features, mask))


def test_load_refuses_mismatched_weights(tmp_path, trained_unet):
    trained_unet.save_pretrained(tmp_path / "unet")
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    (tmp_path / "unet" / "config.json").write_text(json.dumps({**config, "base_channels": 16}))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        UNet.from_pretrained(tmp_path / "unet")


def test_from_dict_refuses_unknown_keys():
    with pytest.raises(ValueError, match="base_chanels") as err:
        UNetConfig.from_dict({"image_size": 16, "base_chanels": 32})
    assert "base_channels" in str(err.value)
    with pytest.raises(ValueError, match="image_size"):
        UNetConfig.from_dict({})
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(image_size=18, channel_mult=(1, 2, 2))


def test_config_dict_round_trip_is_json():
    config = tiny_config()
    assert UNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_32x32_config():
    config = UNetConfig(image_size=32, base_channels=32, text_dim=TEXT_DIM)
    unet = UNet(config)
    x, t, features, mask = inputs(batch=2, size=32)
    with torch.no_grad():
        assert unet(x, t, features, mask).shape == (2, 3, 32, 32)
    assert unet.num_parameters == sum(p.numel() for p in unet.parameters())
