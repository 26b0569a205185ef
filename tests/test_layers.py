"""The building blocks: what ConditionedSequential hands each block, and old state-dict keys loading."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import guided_diffusion
from guided_diffusion.models.classifier import ClassifierConfig, NoiseAwareClassifier
from guided_diffusion.models.unet import UNet
from guided_diffusion.models.layers import (
    ConditionedBlock,
    ConditionedSequential,
    CrossAttention,
    RenamedKeys,
    ResBlock,
    SelfAttention,
    renamed_keys,
)
from guided_diffusion.serialization import WEIGHTS_NAME, CheckpointError


def randomize(module: nn.Module) -> nn.Module:
    """Random values for every parameter (the zero-initialised ones included), fixed by the seed."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(std=0.2)
    return module.eval()


def with_old_keys(module: nn.Module) -> dict[str, torch.Tensor]:
    to_old = {new: old for old, new in renamed_keys(module).items()}
    return {to_old.get(name, name): tensor.clone() for name, tensor in module.state_dict().items()}


class Recorder(ConditionedBlock):
    """Records what it was handed and adds a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def forward(self, x, *, emb, context=None, context_mask=None):
        self.calls.append((emb, context, context_mask))
        return x + 1


def test_conditioned_sequential_hands_conditioned_blocks_everything_and_others_the_feature_map():
    recorder, plain = Recorder(), nn.Identity()
    chain = ConditionedSequential(plain, recorder, SelfAttention(8, 2))
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 5)
    context, mask = torch.randn(2, 3, 6), torch.ones(2, 3, dtype=torch.bool)
    chain(x, emb, context, mask)
    ((got_emb, got_context, got_mask),) = recorder.calls
    assert got_emb is emb and got_context is context and got_mask is mask
    assert isinstance(ResBlock(8, 8, 5), ConditionedBlock) and isinstance(CrossAttention(8, 6, 2), ConditionedBlock)
    assert not isinstance(SelfAttention(8, 2), ConditionedBlock)


def test_a_conditioned_block_must_define_forward():
    class Incomplete(ConditionedBlock):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()


def test_conditioning_inputs_are_keyword_only():
    """A positional call in the old ``CrossAttention(x, context, mask)`` form fails instead of putting the
    text in the embedding's place (where the block would silently be the identity)."""
    x = torch.randn(2, 8, 3, 3)
    with pytest.raises(TypeError):
        CrossAttention(8, 4, 2)(x, torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError):
        ResBlock(8, 8, 5)(x, torch.randn(2, 5))


def test_res_block_has_no_unused_modules():
    """Every submodule of a ResBlock is called, but for the GroupNorms, whose parameters the fused
    normalisation (with its SiLU) reads; no SiLU module sits unused."""
    block = ResBlock(8, 16, 5, dropout=0.1)
    called = set()
    for name, module in block.named_modules():
        if name:
            module.register_forward_hook(lambda m, *_, name=name: called.add(name))
    block(torch.randn(2, 8, 4, 4), emb=torch.randn(2, 5))
    norms = {name for name, module in block.named_modules() if isinstance(module, nn.GroupNorm)}
    assert norms == {"in_norm", "out_norm"}
    assert called == {name for name, _ in block.named_modules() if name} - norms


def test_res_block_loads_its_old_keys_and_computes_the_same():
    block = randomize(ResBlock(8, 16, 5))
    old = with_old_keys(block)
    assert set(old) == {
        "in_layers.0.weight", "in_layers.0.bias", "in_layers.2.weight", "in_layers.2.bias",
        "emb_layers.1.weight", "emb_layers.1.bias", "out_norm.weight", "out_norm.bias",
        "out_layers.2.weight", "out_layers.2.bias", "skip.weight", "skip.bias",
    }
    loaded = ResBlock(8, 16, 5).eval()
    loaded.load_state_dict(old)
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 5)
    with torch.no_grad():
        assert torch.equal(loaded(x, emb=emb), block(x, emb=emb))
    # nested under a prefix, inside a sequential, as in the models
    outer = nn.Sequential(nn.Identity(), ConditionedSequential(randomize(ResBlock(8, 8, 5))))
    old = with_old_keys(outer)
    assert "1.0.in_layers.0.weight" in old
    fresh = nn.Sequential(nn.Identity(), ConditionedSequential(ResBlock(8, 8, 5)))
    fresh.load_state_dict(old)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), outer.state_dict().values()))
    old["1.0.in_layers.1.weight"] = torch.zeros(8)  # the SiLU's slot never held a parameter
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"1\.0\.in_layers\.1\.weight\""):
        fresh.load_state_dict(old)


def test_renamed_keys_gives_full_keys_for_state_kept_by_name():
    """The map for state that bypasses ``load_state_dict`` (an EMA's shadow weights, say)."""

    class Block(RenamedKeys):
        renamed_keys = {"old.weight": "new.weight"}

        def __init__(self):
            super().__init__()
            self.new = nn.Linear(2, 2, bias=False)

    tree = nn.ModuleDict({"a": Block(), "b": nn.Sequential(Block())})
    assert renamed_keys(tree) == {"a.old.weight": "a.new.weight", "b.0.old.weight": "b.0.new.weight"}
    assert renamed_keys(Block()) == {"old.weight": "new.weight"}


def make_classifier() -> NoiseAwareClassifier:
    config = ClassifierConfig(
        image_size=16, labels={"shape": ["circle", "square"]}, base_channels=16, channel_mult=(1, 2),
        attention_resolutions=(8,), num_heads=2,
    )
    return randomize(NoiseAwareClassifier(config))


def test_classifier_loads_its_old_keys_and_computes_the_same(tmp_path):
    clf = make_classifier()
    clf.save_pretrained(tmp_path / "clf")
    old = with_old_keys(clf)
    assert "encoder.1.in_layers.0.weight" in old and "encoder.1.out_layers.2.bias" in old
    save_file({k: v.contiguous() for k, v in old.items()}, str(tmp_path / "clf" / WEIGHTS_NAME))
    loaded = NoiseAwareClassifier.from_pretrained(tmp_path / "clf").eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(loaded(x, t)["shape"], clf(x, t)["shape"])
    old["encoder.1.in_layers.3.weight"] = torch.zeros(1)
    save_file({k: v.contiguous() for k, v in old.items()}, str(tmp_path / "clf" / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match=r"unexpected \['encoder\.1\.in_layers\.3\.weight'\]"):
        NoiseAwareClassifier.from_pretrained(tmp_path / "clf")


@pytest.mark.parametrize(
    "name, component, model_class",
    [("shapes32", "unet", UNet), ("shapes32", "classifier", NoiseAwareClassifier), ("emoji32", "classifier", NoiseAwareClassifier)],
)  # emoji32's UNet was retrained after the rename, so it holds the new keys
def test_shipped_weight_files_keep_the_old_keys_that_load(name, component, model_class):
    """The shipped weights are not rewritten: they hold the old keys, each of which the map renames."""
    folder = Path(guided_diffusion.__file__).parent / "pretrained" / name / component
    keys = set(load_file(str(folder / WEIGHTS_NAME)))
    model = model_class(model_class.config_class.from_dict(json.loads((folder / "config.json").read_text())))
    renames = renamed_keys(model)
    assert keys & set(renames), "the shipped file no longer uses the old keys: this test guards nothing"
    assert {renames.get(key, key) for key in keys} == set(model.state_dict())
