import json

import open_clip
import pytest
import torch
from open_clip.tokenizer import bytes_to_unicode
from safetensors.torch import save_file

from guided_diffusion.serialization import CheckpointError
from guided_diffusion.text import TextEncoder, build_text_encoder, load_text_encoder

OPEN_CLIP_TINY = {
    "backend": "open_clip",
    "model_name": None,
    "pretrained": None,
    "context_length": 12,
    "width": 32,
    "heads": 2,
    "layers": 1,
}
PROMPTS = ["a red circle", "", "a very long prompt that has many more words than the context can hold"]


@pytest.fixture(scope="module")
def frozen() -> TextEncoder:
    torch.manual_seed(0)
    return build_text_encoder(OPEN_CLIP_TINY)


def test_open_clip_shapes_and_mask(frozen):
    assert (frozen.width, frozen.context_length) == (32, 12)
    features, mask = frozen.encode(PROMPTS)
    assert features.shape == (3, 12, 32) and features.dtype == torch.float32
    assert mask.shape == (3, 12) and mask.dtype == torch.bool
    tokens = frozen.tokenize(PROMPTS)
    sot, eot = 49406, 49407
    assert tokens[:, 0].eq(sot).all()
    # "" is start + end tokens, then padding (id 0) which the mask excludes
    assert tokens[1, :2].tolist() == [sot, eot] and tokens[1, 2:].eq(0).all()
    assert mask[1].tolist() == [True, True] + [False] * 10
    # a real prompt is masked through its end token, contiguously
    n = int(mask[0].sum())
    assert tokens[0, n - 1] == eot and mask[0, :n].all() and not mask[0, n:].any()


def test_open_clip_truncates_keeping_end_token(frozen):
    tokens = frozen.tokenize([PROMPTS[2]])
    assert tokens.shape == (1, 12) and tokens[0, -1] == 49407
    _, mask = frozen(tokens)
    assert mask.all()


def test_open_clip_token_count_tells_when_tokenize_truncates(frozen):
    assert frozen.token_count("") == 2
    fits = " ".join(["red"] * (frozen.context_length - 2))
    assert frozen.token_count(fits) == frozen.context_length
    assert frozen.tokenize([fits])[0, -1] == 49407  # the end token is the last one kept
    assert frozen.token_count(fits + " red") == frozen.context_length + 1


def test_open_clip_mask_follows_end_token_not_pad_id(frozen):
    # id 0 is also a real BPE token ("!"); only what follows the end token is padding
    tokens = torch.tensor([[49406, 0, 320, 49407, 0, 0]])
    _, mask = frozen(tokens)
    assert mask.tolist() == [[True, True, True, True, False, False]]


def test_frozen_has_no_grad_and_stays_in_eval(frozen):
    assert not frozen.trainable
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.training
    features, _ = frozen.encode(["x"])
    assert not features.requires_grad


def test_trainable_gets_gradients():
    encoder = build_text_encoder({**OPEN_CLIP_TINY, "trainable": True})
    assert encoder.training and all(p.requires_grad for p in encoder.parameters())
    features, mask = encoder.encode(["a red circle"])
    features[mask].sum().backward()
    assert encoder.tower.transformer.resblocks[0].mlp.c_fc.weight.grad is not None


def test_open_clip_save_load_round_trip(tmp_path, frozen):
    frozen.save_pretrained(tmp_path / "text")
    loaded = load_text_encoder(tmp_path / "text")
    assert loaded.config == frozen.config
    assert json.loads((tmp_path / "text" / "config.json").read_text())["backend"] == "open_clip"
    assert torch.equal(loaded.encode(PROMPTS)[0], frozen.encode(PROMPTS)[0])


def test_missing_or_corrupt_files_are_refused_by_name(tmp_path, frozen):
    folder = tmp_path / "text"
    frozen.save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_text_encoder(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_text_encoder(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_text_encoder(folder)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="backend"):
        build_text_encoder({"backend": "clip"})
    with pytest.raises(ValueError, match="valid keys"):
        build_text_encoder({**OPEN_CLIP_TINY, "widht": 8})
    with pytest.raises(ValueError, match="vocab_size"):
        build_text_encoder({**OPEN_CLIP_TINY, "vocab_size": 1000})
    with pytest.raises(ValueError, match="list_models"):
        build_text_encoder({**OPEN_CLIP_TINY, "model_name": "ViT-Nope"})
    with pytest.raises(ValueError, match="backend: transformers"):
        build_text_encoder({**OPEN_CLIP_TINY, "model_name": "ViT-B-16-SigLIP"})
    with pytest.raises(ValueError, match="name_or_path"):
        build_text_encoder({"backend": "transformers"})


def test_open_clip_named_architecture_from_local_weights(tmp_path):
    """The ``model_name`` path with a local weights file: per-token features match open_clip's own."""
    name = "ViT-S-32-alt"  # the smallest built-in architecture with a CLIP text tower
    reference = open_clip.create_model(name).eval()
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))

    encoder = build_text_encoder({"backend": "open_clip", "model_name": name, "pretrained": str(weights)})
    assert encoder.width == 256 and encoder.context_length == 77 and encoder.config["layers"] == 10
    tokens = encoder.tokenize(["a red circle"])
    features, mask = encoder(tokens)
    eot_index = int(mask[0].sum()) - 1
    with torch.no_grad():
        expected = reference.encode_text(tokens)
    assert torch.allclose(features[0, eot_index] @ reference.text_projection, expected[0], atol=1e-5)

    encoder.save_pretrained(tmp_path / "text")
    loaded = load_text_encoder(tmp_path / "text")  # rebuilds the architecture without fetching weights
    assert torch.equal(loaded(tokens)[0], features)


# --- transformers backend -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny CLIPTextModel and a CLIP BPE tokenizer (bytes + two merges) saved as a local folder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("hf")
    chars = list(bytes_to_unicode().values())
    merges = [("r", "e"), ("re", "d</w>")]
    tokens = chars + [c + "</w>" for c in chars] + [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    (root / "vocab").mkdir()
    (root / "vocab" / "vocab.json").write_text(json.dumps(vocab))
    (root / "vocab" / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer.from_pretrained(root / "vocab")

    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    model = CLIPTextModel(config)
    folder = root / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_encoder(hf_folder) -> TextEncoder:
    return build_text_encoder({"backend": "transformers", "name_or_path": str(hf_folder)})


def test_transformers_shapes_and_mask(hf_encoder):
    assert (hf_encoder.width, hf_encoder.context_length) == (32, 16)
    features, mask = hf_encoder.encode(PROMPTS)
    assert features.shape == (3, 16, 32) and mask.shape == (3, 16)
    tokens = hf_encoder.tokenize(PROMPTS)
    eos = hf_encoder.tokenizer.eos_token_id
    # pad and end tokens share an id here, so the end token must still count as real
    assert mask[1].tolist() == [True, True] + [False] * 14
    assert mask[2].all() and tokens[2, -1] == eos
    n = int(mask[0].sum())
    assert tokens[0, n - 1] == eos and tokens[0, n:].eq(eos).all()
    assert not features.requires_grad


def test_transformers_token_count_includes_start_and_end(hf_encoder):
    tokens = hf_encoder.tokenize(["a red circle"])
    _, mask = hf_encoder(tokens)
    assert hf_encoder.token_count("a red circle") == int(mask.sum())


def test_transformers_save_load_round_trip(tmp_path, hf_encoder):
    folder = tmp_path / "text"
    hf_encoder.save_pretrained(folder)
    assert json.loads((folder / "text_encoder.json").read_text())["backend"] == "transformers"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert not list(folder.rglob("*.bin"))
    loaded = load_text_encoder(folder)
    assert loaded.config == hf_encoder.config
    assert torch.equal(loaded.encode(PROMPTS)[0], hf_encoder.encode(PROMPTS)[0])


def test_transformers_missing_or_corrupt_files_are_refused_by_name(tmp_path, hf_encoder):
    folder = tmp_path / "text"
    hf_encoder.save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_text_encoder(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        load_text_encoder(folder)


def _segmented(config: dict) -> TextEncoder:
    torch.manual_seed(0)
    return build_text_encoder({**config, "segment_separator": ","})


def _assert_segments_encoded_apart(encoder: TextEncoder, whole: TextEncoder) -> None:
    """``encoder`` (separator ",") lays each segment's own features end to end: they equal ``whole``'s
    features of the segment as a prompt by itself, whatever the other segments are."""
    features, mask = encoder.encode(["red, blue", "red, red red", "", " , red ,, "])
    red, red_mask = whole.encode(["red"])
    blue, blue_mask = whole.encode(["blue"])
    n, k = int(red_mask.sum()), int(blue_mask.sum())
    torch.testing.assert_close(features[0, :n], red[0, :n], rtol=0, atol=1e-5)
    torch.testing.assert_close(features[0, n : n + k], blue[0, :k], rtol=0, atol=1e-5)
    torch.testing.assert_close(features[1, :n], red[0, :n], rtol=0, atol=1e-5)  # the same, whatever follows
    assert mask[0].tolist() == [True] * (n + k) + [False] * (encoder.context_length - n - k)
    empty, empty_mask = whole.encode([""])
    torch.testing.assert_close(features[2], empty[0])  # the unconditional input is unchanged
    assert torch.equal(mask[2], empty_mask[0])
    torch.testing.assert_close(features[3, :n], red[0, :n], rtol=0, atol=1e-5)  # blank parts dropped
    assert int(mask[3].sum()) == n == encoder.token_count(" , red ,, ")
    assert encoder.token_count("red, blue") == n + k == whole.token_count("red") + whole.token_count("blue")


def test_open_clip_segments_are_encoded_apart(frozen):
    segmented = _segmented(OPEN_CLIP_TINY)
    _assert_segments_encoded_apart(segmented, frozen)
    none, none_mask = segmented.encode([])  # an empty batch, as the whole-prompt path allows
    assert none.shape == (0, 12, 32) and none_mask.shape == (0, 12)
    sot, eot = 49406, 49407
    tokens = segmented.tokenize(["red, blue"])[0].tolist()
    assert tokens[:6] == [sot, segmented._tokenizer.encode("red")[0], eot, sot, segmented._tokenizer.encode("blue")[0], eot]
    # too long for the context: truncated, the last kept token an end token, every kept token real
    long = ", ".join(["red"] * 8)
    assert segmented.token_count(long) == 24 > segmented.context_length
    tokens = segmented.tokenize([long])
    assert tokens[0, -1] == eot and segmented(tokens)[1].all()


def test_transformers_segments_are_encoded_apart(hf_folder, hf_encoder):
    _assert_segments_encoded_apart(_segmented({"backend": "transformers", "name_or_path": str(hf_folder)}), hf_encoder)


def test_trainable_segments_get_gradients():
    encoder = _segmented({**OPEN_CLIP_TINY, "trainable": True})
    features, mask = encoder.encode(["red, blue", "blue"])
    (features * mask[..., None] * torch.randn(features.shape[-1])).sum().backward()  # a plain sum of a layer norm's output is 0
    assert encoder.tower.token_embedding.weight.grad.abs().sum() > 0


def test_segment_separator_is_saved_and_may_be_set_on_a_saved_encoder(tmp_path):
    _segmented(OPEN_CLIP_TINY).save_pretrained(tmp_path / "segmented")
    assert load_text_encoder(tmp_path / "segmented").segment_separator == ","
    torch.manual_seed(0)
    build_text_encoder(OPEN_CLIP_TINY).save_pretrained(tmp_path / "whole")  # the same weights as _segmented's
    loaded = build_text_encoder({"from_pretrained": str(tmp_path / "whole"), "segment_separator": ","})
    assert loaded.segment_separator == "," and loaded.config["segment_separator"] == ","
    torch.testing.assert_close(loaded.encode(["red, blue"])[0], _segmented(OPEN_CLIP_TINY).encode(["red, blue"])[0])
    for bad in ["", "  "]:
        with pytest.raises(ValueError, match="segment_separator must be null or a non-blank string, got"):
            build_text_encoder({**OPEN_CLIP_TINY, "segment_separator": bad})
    with pytest.raises(ValueError, match="segment_separator must be a string"):
        build_text_encoder({**OPEN_CLIP_TINY, "segment_separator": 3})
    with pytest.raises(ValueError, match="takes only trainable and segment_separator"):
        build_text_encoder({"from_pretrained": str(tmp_path / "whole"), "width": 8})


# ------------------------------------------------------------------------------------- vocabulary


def test_a_restricted_vocabulary_keeps_the_features_of_its_prompts_and_reads_other_tokens_as_one():
    torch.manual_seed(0)
    encoder = build_text_encoder(OPEN_CLIP_TINY)
    kept_prompts = ["a red circle", "a blue square in the top left", ""]
    before, before_mask = encoder.encode(kept_prompts)
    table = encoder.tower.token_embedding.weight.detach().clone()
    kept = encoder.restrict_vocabulary(["a red circle", "a blue square in the top left"])
    ids = sorted(set(encoder.tokenize(kept_prompts).unique().tolist()))
    assert encoder.vocabulary == ids and kept == len(ids) == 12  # 9 words, start, end and pad
    assert encoder.tower.token_embedding.weight.shape == (13, 32)
    assert sum(p.numel() for p in encoder.parameters()) == sum(p.numel() for p in build_text_encoder(OPEN_CLIP_TINY).parameters()) - (49408 - 13) * 32
    after, after_mask = encoder.encode(kept_prompts)
    assert torch.equal(after, before) and torch.equal(after_mask, before_mask)
    # every other token reads one row: the mean of the rows dropped
    dropped = torch.ones(49408, dtype=torch.bool)
    dropped[ids] = False
    torch.testing.assert_close(encoder.tower.token_embedding.weight[-1], table[dropped].mean(dim=0))
    zebra, _ = encoder.encode(["a zebra circle"])
    giraffe, _ = encoder.encode(["a giraffe circle"])
    assert torch.equal(zebra, giraffe)
    # restricting again only drops more: a word read as unknown stays unknown
    assert encoder.restrict_vocabulary(["a red zebra"]) == 5
    torch.testing.assert_close(encoder.encode(["a red"])[0][0, :3], before[0, :3])  # a causal tower: the same first tokens


def test_a_restricted_vocabulary_is_saved_loaded_and_trained(tmp_path):
    torch.manual_seed(0)
    encoder = build_text_encoder({**OPEN_CLIP_TINY, "trainable": True})
    encoder.restrict_vocabulary(["a red circle"])
    encoder.save_pretrained(tmp_path / "te")
    assert json.loads((tmp_path / "te" / "config.json").read_text())["vocabulary"] == encoder.vocabulary
    loaded = load_text_encoder(tmp_path / "te")
    assert loaded.vocabulary == encoder.vocabulary
    for prompt in ("a red circle", "a green triangle"):
        assert torch.equal(loaded.encode([prompt])[0], encoder.encode([prompt])[0])
    features, mask = encoder.encode(["a red circle"])
    features[mask].sum().backward()
    grad = encoder.tower.token_embedding.weight.grad
    # rows: pad, a, red, circle, start, end, unknown; padding comes after the real tokens, so no gradient
    assert grad.shape == (7, 32) and grad.abs().sum(dim=1).gt(0).tolist() == [False] + [True] * 5 + [False]


@pytest.mark.parametrize(
    "vocabulary, message",
    [
        ("all", "must be a list \\(or null\\)"),
        ([0, 49406, 49407, 1.5], "must be a list \\(or null\\)"),
        ([0, 49407, 49406], "must be distinct token ids in \\[0, 49408\\), in increasing order"),
        ([0, 0, 49406, 49407], "must be distinct token ids"),
        ([0, 49406, 49407, 49408], "must be distinct token ids in \\[0, 49408\\)"),
        ([-1, 0, 49406, 49407], "must be distinct token ids"),
        ([0, 320, 49407], "must hold the start, end and pad token ids; it lacks \\[49406\\]"),
    ],
)
def test_bad_vocabularies_are_refused(vocabulary, message):
    with pytest.raises(ValueError, match=f"text_encoder.vocabulary {message}"):
        build_text_encoder({**OPEN_CLIP_TINY, "vocabulary": vocabulary})
