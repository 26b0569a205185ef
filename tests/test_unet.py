import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

from guided_diffusion.models import UNet, UNetConfig
from guided_diffusion.models.unet import coordinate_planes
from guided_diffusion.models.layers import (
    CrossAttention,
    Downsample,
    ResBlock,
    SelfAttention,
    Upsample,
    renamed_keys,
    timestep_embedding,
)
from guided_diffusion.models.ops import group_norm_act
from guided_diffusion.serialization import WEIGHTS_NAME, CheckpointError

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
    out = block(x, context=torch.randn(2, 5, 4), context_mask=torch.zeros(2, 5, dtype=torch.bool))
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


def test_coordinate_planes_are_row_and_column_in_minus_one_to_one():
    planes = coordinate_planes(torch.zeros(2, 3, 4, 5))
    assert planes.shape == (2, 2, 4, 5)
    torch.testing.assert_close(planes[1, 0, :, 3], torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))
    torch.testing.assert_close(planes[0, 1, 2], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert (planes[:, 0] == planes[:, 0, :, :1]).all() and (planes[:, 1] == planes[:, 1, :1]).all()


def test_coordinate_channels_feed_the_first_convolution(tmp_path):
    unet = randomize(UNet(tiny_config(coordinate_channels=True)))
    first = unet.input_blocks[0][0]
    assert first.in_channels == 5
    x, t, features, mask = inputs()
    with torch.no_grad():
        out = unet(x, t, features, mask)
        first.weight[:, 3:] = 0  # blind the model to the coordinates
        assert not torch.allclose(unet(x, t, features, mask), out)
    unet.save_pretrained(tmp_path)
    assert UNet.from_pretrained(tmp_path).config.coordinate_channels is True


def test_32x32_config():
    config = UNetConfig(image_size=32, base_channels=32, text_dim=TEXT_DIM)
    unet = UNet(config)
    x, t, features, mask = inputs(batch=2, size=32)
    with torch.no_grad():
        assert unet(x, t, features, mask).shape == (2, 3, 32, 32)
    assert unet.num_parameters == sum(p.numel() for p in unet.parameters())


# ---------------------------------------------------------------- the unoptimised computation, for reference


def _reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep_keys: torch.Tensor | None = None):
    """softmax(q k^T / sqrt(d)) v over ``[B, heads, N, d]``; ``keep_keys`` bool ``[B, L]`` masks keys."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if keep_keys is not None:
        scores = scores.masked_fill(~keep_keys[:, None, None, :], float("-inf"))
    return scores.softmax(-1) @ v


def _reference_block(layer, h, emb, context, context_mask):
    """One block of a ``ConditionedSequential``, in NCHW with torch's GroupNorm/SiLU and explicit attention."""
    if isinstance(layer, ResBlock):
        out = layer.in_conv(F.silu(layer.in_norm(h)))
        scale, shift = layer.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
        out = torch.addcmul(shift, layer.out_norm(out), 1 + scale)
        return layer.skip(h) + layer.out_conv(layer.dropout(F.silu(out)))
    if isinstance(layer, (SelfAttention, CrossAttention)):
        if isinstance(layer, CrossAttention) and context is None:
            return h
        b, c, height, width = h.shape
        heads = layer.num_heads
        tokens = layer.norm(h).flatten(2).transpose(1, 2)  # [B, HW, C]

        def split(x):
            return x.view(b, x.shape[1], heads, -1).transpose(1, 2)

        keep = None
        if isinstance(layer, SelfAttention):
            q, k, v = (split(part) for part in layer.qkv(tokens).chunk(3, dim=-1))
            attended = _reference_attention(q, k, v)
        else:
            q = split(layer.q(tokens))
            k, v = (split(part) for part in layer.kv(context).chunk(2, dim=-1))
            mask = torch.ones(context.shape[:2], dtype=torch.bool) if context_mask is None else context_mask
            keep = mask.any(dim=1)
            attended = _reference_attention(q, k, v, mask | ~keep[:, None])
        out = layer.proj_out(attended.transpose(1, 2).reshape(b, height * width, c))
        if keep is not None:
            out = out * keep[:, None, None]
        return h + out.transpose(1, 2).reshape(h.shape)
    if isinstance(layer, Upsample):
        return layer.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
    if isinstance(layer, Downsample):
        return layer.conv(h)
    return layer(h)


def reference_forward(unet: UNet, x, t, features=None, mask=None) -> torch.Tensor:
    """What ``unet(x, t, features, mask)`` computed before the CPU optimisations (same parameters)."""
    emb = unet.time_embed(timestep_embedding(t, unet.config.base_channels))
    if features is not None:
        emb = emb + unet.text_pool_proj(UNet._pool_text(features, mask))
    if unet.config.coordinate_channels:
        size = x.shape[-1]
        ramp = torch.arange(size, dtype=x.dtype) * 2 / (size - 1) - 1
        planes = torch.stack([ramp[:, None].expand(size, size), ramp[None, :].expand(size, size)])
        x = torch.cat([x, planes.expand(x.shape[0], 2, size, size)], dim=1)
    h, skips = x, []
    for block in unet.input_blocks:
        for layer in block:
            h = _reference_block(layer, h, emb, features, mask)
        skips.append(h)
    for layer in unet.middle_block:
        h = _reference_block(layer, h, emb, features, mask)
    for block in unet.output_blocks:
        h = torch.cat([h, skips.pop()], dim=1)
        for layer in block:
            h = _reference_block(layer, h, emb, features, mask)
    return unet.out_conv(F.silu(unet.out_norm(h)))


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(
    "overrides", [{}, {"base_channels": 32, "channel_mult": [1, 2, 2]}, {"coordinate_channels": True}]
)
def test_matches_the_unoptimised_computation(overrides):
    """Fixed-seed outputs and gradients agree with :func:`reference_forward` (8 or 32 channels per group)."""
    config = tiny_config(**overrides)
    image_size = config.image_size
    torch.manual_seed(0)
    unet = randomize(UNet(config))
    with torch.no_grad():
        for parameter in unet.parameters():  # move the norms off their identity initialisation too
            parameter.add_(torch.randn_like(parameter) * 0.05)
    x, t, features, mask = inputs(batch=3, size=image_size)
    mask[2] = False  # one row without tokens
    with torch.no_grad():
        expected = reference_forward(unet, x, t, features, mask)
        assert _relative_error(unet(x, t, features, mask), expected) < 1e-5
        assert _relative_error(unet(x, t), reference_forward(unet, x, t)) < 1e-5

    x.requires_grad_(True)
    features.requires_grad_(True)
    grads = []
    for forward in (unet, lambda *a: reference_forward(unet, *a)):
        unet.zero_grad(set_to_none=True)
        x.grad = features.grad = None
        forward(x, t, features, mask).square().mean().backward()
        grads.append([x.grad, features.grad] + [p.grad for p in unet.parameters()])
    scale = max(g.abs().max() for g in grads[1])
    for ours, reference in zip(*grads):
        # Conv biases right before a per-channel GroupNorm have a zero gradient up to rounding.
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5 * scale)


def _with_old_keys(state: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state`` (keyed as ``module.state_dict()``) under the keys checkpoints saved before the renames use."""
    to_old = {new: old for old, new in renamed_keys(module).items()}
    return {to_old.get(name, name): tensor for name, tensor in state.items()}


def _layout(state: dict[str, torch.Tensor]) -> str:
    return hashlib.sha256("".join(f"{name}:{tuple(t.shape)};" for name, t in state.items()).encode()).hexdigest()


def test_state_dict_layout_is_unchanged():
    """Checkpoints saved before the CPU optimisations and the renames of the unused-SiLU sequentials must
    keep loading: under the old keys the state dict has the same names, shapes and order as then, and
    the current layout is pinned so that a further rename is noticed."""
    config = UNetConfig(
        image_size=16, base_channels=24, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
        num_heads=2, text_dim=16,
    )
    unet = UNet(config)
    state = unet.state_dict()
    assert (len(state), sum(t.numel() for t in state.values())) == (162, 454131)
    assert _layout(_with_old_keys(state, unet)) == (
        "96281adeb077260deaffb590fcb756bd7d36db0cd12dfc07f6fdc8459fe3d855"
    ), "the UNet's parameter names or shapes changed: saved checkpoints would no longer load"
    assert _layout(state) == (
        "cdd51361dfb3a1f13797572c176bf24ee3e2ee939e7597e1dc72b9f1413c0804"
    ), "the UNet's parameter names changed: add the old ones to its renamed_keys and update this hash"


def test_old_key_state_dict_loads_and_gives_identical_outputs(tmp_path, trained_unet):
    """A state dict under the old keys (``in_layers.0``/``.2``, ``out_layers.2``, ``out.0``/``.2``) loads
    strictly, through ``load_state_dict`` and ``from_pretrained``, and the model computes the same."""
    old = _with_old_keys(trained_unet.state_dict(), trained_unet)
    assert "input_blocks.1.0.in_layers.0.weight" in old and "out.2.bias" in old
    assert "middle_block.0.out_layers.2.weight" in old and "out_conv.weight" not in old
    loaded = UNet(trained_unet.config).eval()
    loaded.load_state_dict(old)  # strict
    x, t, features, mask = inputs()
    with torch.no_grad():
        expected = trained_unet(x, t, features, mask)
        assert torch.equal(loaded(x, t, features, mask), expected)
    # the parameters are in the order they had, so optimizer states saved then line up
    assert [p.shape for p in loaded.parameters()] == [t.shape for t in old.values()]
    assert all(torch.equal(p, t) for p, t in zip(loaded.parameters(), old.values()))

    trained_unet.save_pretrained(tmp_path / "unet")
    save_file({k: v.contiguous() for k, v in old.items()}, str(tmp_path / "unet" / WEIGHTS_NAME))
    with torch.no_grad():
        assert torch.equal(UNet.from_pretrained(tmp_path / "unet").eval()(x, t, features, mask), expected)
    assert set(UNet.from_pretrained(tmp_path / "unet").state_dict()) == set(trained_unet.state_dict())


@pytest.mark.parametrize(
    "change",
    [
        "unknown_key",  # the SiLU's slot in the old sequential never held a parameter
        "both_names",  # a key under its old and its new name
        "missing_key",
        "misspelled_old_key",
    ],
)
def test_wrong_keys_are_still_refused(tmp_path, trained_unet, change):
    old = _with_old_keys(trained_unet.state_dict(), trained_unet)
    if change == "unknown_key":
        old["input_blocks.1.0.in_layers.1.weight"] = torch.zeros(3)
        wrong = "input_blocks.1.0.in_layers.1.weight"
    elif change == "both_names":
        old["out_conv.weight"] = old["out.2.weight"].clone()
        wrong = "out.2.weight"
    elif change == "missing_key":
        del old["input_blocks.1.0.out_layers.2.bias"]
        wrong = "input_blocks.1.0.out_conv.bias"
    else:
        old["input_blocks.1.0.in_layer.0.weight"] = old.pop("input_blocks.1.0.in_layers.0.weight")
        wrong = "input_blocks.1.0.in_layer.0.weight"
    with pytest.raises(RuntimeError, match=wrong.replace(".", r"\.")):
        UNet(trained_unet.config).load_state_dict(old)
    trained_unet.save_pretrained(tmp_path / "unet")
    save_file({k: v.contiguous() for k, v in old.items()}, str(tmp_path / "unet" / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match its config: .*" + wrong.replace(".", r"\.")):
        UNet.from_pretrained(tmp_path / "unet")


def test_wrong_shapes_are_refused_with_the_names(tmp_path, trained_unet):
    trained_unet.save_pretrained(tmp_path / "unet")
    state = load_file(str(tmp_path / "unet" / WEIGHTS_NAME))
    state["out_conv.bias"] = torch.zeros(5)
    save_file(state, str(tmp_path / "unet" / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match its config: size mismatch for out_conv\.bias"):
        UNet.from_pretrained(tmp_path / "unet")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("act", [False, True])
def test_group_norm_act_matches_torch(channels_last, modulated, act):
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 12)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_(0.0, 0.3)
    x = torch.randn(3, 12, 5, 6) * 3 + 5  # a mean well away from 0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    scale, shift = (torch.randn(3, 12) * 0.5, torch.randn(3, 12)) if modulated else (None, None)
    leaves = [x, norm.weight, norm.bias] + ([scale, shift] if modulated else [])
    results = []
    for fused in (True, False):
        for leaf in leaves:
            leaf.grad = None
            leaf.requires_grad_(True)
        if fused:
            out = group_norm_act(x, norm, scale, shift, act=act)
        else:
            out = norm(x)
            if modulated:
                out = out * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
            out = F.silu(out) if act else out
        out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape))
        results.append([out.detach()] + [leaf.grad for leaf in leaves])
        if fused:
            assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(group_norm_act(x, norm, scale, shift, act=act), results[1][0], rtol=1e-4, atol=1e-5)


def test_group_norm_act_gradients_in_float64():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(2, 6).double()
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s, b: group_norm_act(x, norm, s, b), (x, scale, shift))
    assert torch.autograd.gradcheck(lambda x: group_norm_act(x, norm, act=False), (x,))


def test_output_is_contiguous_for_either_input_layout(trained_unet):
    x, t, features, mask = inputs()
    with torch.no_grad():
        out = trained_unet(x, t, features, mask)
        out_cl = trained_unet(x.contiguous(memory_format=torch.channels_last), t, features, mask)
    assert out.is_contiguous() and out_cl.is_contiguous()
    torch.testing.assert_close(out, out_cl, rtol=1e-5, atol=1e-6)


def test_runs_in_bfloat16_close_to_float32(trained_unet):
    """A UNet cast to bfloat16 (as the pipeline allows) keeps that dtype throughout and stays close."""
    x, t, features, mask = inputs()
    low = UNet(trained_unet.config).to(torch.bfloat16)
    low.load_state_dict(trained_unet.state_dict())
    with torch.no_grad():
        out = low(x.bfloat16(), t, features.bfloat16(), mask)
        expected = trained_unet(x, t, features, mask)
    assert out.dtype == torch.bfloat16
    assert _relative_error(out.float(), expected) < 0.05
    low(x.bfloat16(), t, features.bfloat16(), mask).float().square().mean().backward()
    assert all(p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad).all() for p in low.parameters())


def _loss_and_gradients(unet: UNet, x, t, features, mask) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    unet.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # the dropout masks
    loss = unet(x, t, features, mask).square().mean()
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in unet.named_parameters()}


def test_gradient_checkpointing_gives_the_same_loss_and_gradients_in_float64():
    unet = randomize(UNet(tiny_config(dropout=0.1))).double().train()
    x, t, features, mask = inputs()
    x, features = x.double(), features.double()
    loss, grads = _loss_and_gradients(unet, x, t, features, mask)
    unet.enable_gradient_checkpointing()
    checkpointed_loss, checkpointed_grads = _loss_and_gradients(unet, x, t, features, mask)
    torch.testing.assert_close(checkpointed_loss, loss, rtol=1e-12, atol=0)
    assert checkpointed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-12, atol=1e-15)


def test_gradient_checkpointing_recomputes_only_in_training_with_gradients(monkeypatch):
    import guided_diffusion.models.unet as unet_module

    calls = []
    checkpoint = unet_module.checkpoint

    def counted_checkpoint(*args, **kwargs):
        calls.append(kwargs)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(unet_module, "checkpoint", counted_checkpoint)
    unet = UNet(tiny_config())
    state = unet.state_dict()
    unet.enable_gradient_checkpointing()
    x, t, features, mask = inputs()
    unet.train()(x, t, features, mask)
    blocks = len(unet.input_blocks) + 1 + len(unet.output_blocks)
    assert calls == [{"use_reentrant": False}] * blocks
    with torch.no_grad():
        unet(x, t, features, mask)
    unet.eval()(x, t, features, mask)
    unet.disable_gradient_checkpointing()
    unet.train()(x, t, features, mask)
    assert len(calls) == blocks
    assert list(unet.state_dict()) == list(state) and unet.config == tiny_config()


def test_compiled_unet_with_gradient_checkpointing_gives_the_eager_loss_and_gradients():
    """torch.compile (AOTAutograd, as inductor uses it, without code generation) through the checkpointed
    blocks and the fused normalisation's autograd function, in float64; the parameter names stay."""
    config = tiny_config(image_size=8, channel_mult=[1], attention_resolutions=[], base_channels=8)
    unet = randomize(UNet(config)).double().train()
    compiled = copy.deepcopy(unet)
    compiled.enable_gradient_checkpointing()
    compiled.compile(backend="aot_eager")
    x, t, features, mask = inputs(size=8)
    x, features = x.double(), features.double()
    loss, grads = _loss_and_gradients(unet, x, t, features, mask)
    compiled_loss, compiled_grads = _loss_and_gradients(compiled, x, t, features, mask)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-12, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-10, atol=1e-14)
    assert list(compiled.state_dict()) == list(unet.state_dict())


def test_accelerate_resume_reads_a_checkpoint_with_the_old_keys(tmp_path, trained_unet):
    """Training checkpoints (``accelerator.save_state``) written before the renames resume: accelerate's
    ``load_state`` loads the model through ``load_state_dict``, where the renames apply."""
    from accelerate import Accelerator

    saving = Accelerator(cpu=True)
    saving.prepare(copy.deepcopy(trained_unet))
    saving.save_state(str(tmp_path / "checkpoint"))
    weights = tmp_path / "checkpoint" / "model.safetensors"
    old = _with_old_keys(trained_unet.state_dict(), trained_unet)
    assert set(load_file(str(weights))) == set(trained_unet.state_dict())
    save_file({k: v.contiguous() for k, v in old.items()}, str(weights))
    loading = Accelerator(cpu=True)
    fresh = loading.prepare(UNet(trained_unet.config))
    loading.load_state(str(tmp_path / "checkpoint"))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained_unet.state_dict().values()))
    save_file({**{k: v.contiguous() for k, v in old.items()}, "out.1.weight": torch.zeros(1)}, str(weights))
    with pytest.raises(RuntimeError, match=r"out\.1\.weight"):
        loading.load_state(str(tmp_path / "checkpoint"))


def test_an_ema_saved_under_the_old_weight_names_resumes():
    from train.ema import EMA

    unet = randomize(UNet(tiny_config()))
    ema = EMA(unet)
    state = ema.state_dict()
    state["shadow"] = {k: v + 1 for k, v in _with_old_keys(state["shadow"], unet).items()}
    assert set(state["shadow"]) != set(ema.shadow)  # the old names are really there
    resumed = EMA(unet)
    resumed.load_state_dict(state)
    assert all(torch.equal(resumed.shadow[k], ema.shadow[k] + 1) for k in ema.shadow)
    with pytest.raises(ValueError, match="EMA state lacks weights"):
        resumed.load_state_dict({"num_updates": 0, "shadow": {}})
