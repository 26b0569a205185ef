"""Text encoders: prompts in, per-token features ``[B, L, D]`` and a mask ``[B, L]`` out.

Two backends sit behind :class:`TextEncoder`, chosen by the ``backend`` key of the config:

``open_clip``
    Keys: ``model_name`` (an open_clip architecture such as ``"ViT-B-32"``, or null),
    ``pretrained`` (an open_clip pretrained tag or a local weights file, or null), ``context_length``
    (default: the architecture's, or 77), ``width``, ``heads``, ``layers``, ``vocab_size`` (default
    49408), ``trainable``, ``vocabulary`` (default null).
    With ``model_name`` the architecture is built by ``open_clip.create_model`` (which downloads the
    weights when ``pretrained`` is a tag) and only its text tower is kept; ``width``, ``heads``,
    ``layers`` and ``vocab_size`` are then read from the architecture and the given values ignored.
    Without ``model_name`` a small causal text transformer is built from those keys with open_clip's
    own ``TextTransformer``. Prompts are tokenized by open_clip's ``SimpleTokenizer`` (pad id 0).

    ``vocabulary`` (a sorted list of token ids, or null for all ``vocab_size``) keeps a token embedding
    for those ids only, plus one shared *unknown* embedding that every other id reads. A model trained
    on a few hundred distinct words never trains the other 49,000 rows of the table (6.3M of the 6.7M
    parameters of a width-128 tower): :meth:`OpenCLIPTextEncoder.restrict_vocabulary` drops them from a
    trained encoder, leaving the features of every prompt made of kept tokens exactly as they were.

``transformers``
    Keys: ``name_or_path`` (a local folder or a hub id), ``trainable``, ``context_length`` (default:
    the tokenizer's ``model_max_length`` capped by the model's ``max_position_embeddings``).
    Loads ``CLIPTextModel`` and the tokenizer with ``from_pretrained``; features are
    ``last_hidden_state``.

Every backend also takes ``segment_separator`` (default null). With it, a prompt is cut at each
separator and every non-empty part (a *segment*, stripped of surrounding spaces) is encoded on its own,
with its own start and end tokens and positions counted from 0, as if it were a prompt by itself; the
segments' tokens are then laid end to end in one row of ``context_length`` tokens. No segment sees
another, so with ``segment_separator: ","`` the tokens of ``"tiger face"`` in ``"tiger face, twitter
style"`` are the same as in ``"tiger face, google style"`` or ``"tiger face"``, and the style's tokens are
the same for every name: a model conditioned on them reads the parts apart, which is what combining a
content with a style it was never seen in needs (the model card of emoji32 measures it). It is how a
prompt's chunks are encoded separately in other tools (AUTOMATIC1111's ``BREAK``). A row longer than
``context_length`` is truncated, its last kept token made an end token.

Features are the hidden states of every token after the final layer norm. The mask is True on real
tokens, start and end tokens included, and False on padding: a row is real up to and including its
first end-of-text token (with segments: its last segment's). The empty prompt ``""`` (start and end
tokens only) is the unconditional input. Encoders are frozen (no gradients, always in eval mode) unless ``trainable: true``.

A saved encoder is a folder holding ``config.json`` and ``model.safetensors``:

* ``open_clip``: ``config.json`` is the config above (with its ``backend``) and ``model.safetensors``
  the text tower's weights. A named architecture is rebuilt without fetching ``pretrained``.
* ``transformers``: the folder is a plain Hugging Face model folder (its ``config.json`` is the
  ``CLIPTextConfig``, ``model.safetensors`` the weights, plus the tokenizer files) and the config
  above goes to ``text_encoder.json``. Loading reads only that folder (no hub, safetensors only) and
  leaves reading the weights to ``transformers`` itself, which knows its own weight names.

Nothing is unpickled on load; a missing or corrupt file is refused by name.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .config import Config
from .errors import ConfigError
from .serialization import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_component_config,
    load_component_weights,
    load_json,
    save_component,
    save_json,
)

TRANSFORMERS_CONFIG_NAME = "text_encoder.json"


@dataclass
class TextEncoderConfig(Config):
    """The keys of a ``text_encoder`` section that every backend reads (see the module's docstring)."""

    section = "text_encoder"

    backend: str
    context_length: int | None = None
    trainable: bool = False
    segment_separator: str | None = None

    def __post_init__(self) -> None:
        _check_segment_separator(self.segment_separator)


def _check_segment_separator(separator: Any) -> None:
    if separator is not None and (not isinstance(separator, str) or not separator.strip()):
        raise ConfigError(f"text_encoder.segment_separator must be null or a non-blank string, got {separator!r}")


def split_segments(prompt: str, separator: str | None) -> list[str]:
    """The segments of ``prompt`` cut at ``separator``, stripped, empty ones dropped; ``[prompt]`` with
    no separator, and ``[""]`` when nothing is left (the empty prompt stays the unconditional input)."""
    if separator is None:
        return [prompt]
    return [part for part in (piece.strip() for piece in prompt.split(separator)) if part] or [""]


@dataclass
class OpenCLIPTextConfig(TextEncoderConfig):
    """The ``text_encoder`` section of the ``open_clip`` backend."""

    backend: str = "open_clip"
    model_name: str | None = None
    pretrained: str | None = None
    width: int = 512
    heads: int = 8
    layers: int = 12
    vocab_size: int = 49408
    vocabulary: list[int] | None = None


@dataclass
class TransformersTextConfig(TextEncoderConfig):
    """The ``text_encoder`` section of the ``transformers`` backend."""

    backend: str = "transformers"
    name_or_path: str | None = None


def _real_token_mask(tokens: torch.Tensor, eos_id: int | None, pad_id: int | None) -> torch.Tensor:
    """Bool ``[B, L]``: True up to and including each row's first ``eos_id``.

    Rows without an end token fall back to ``tokens != pad_id`` (all True when there is no pad id).
    Using the end token rather than the pad id keeps the mask right when the two ids coincide.
    """
    fallback = tokens != pad_id if pad_id is not None else torch.ones_like(tokens, dtype=torch.bool)
    if eos_id is None:
        return fallback
    is_eos = tokens == eos_id
    first_eos = is_eos.int().argmax(dim=1, keepdim=True)
    through_eos = torch.arange(tokens.shape[1], device=tokens.device)[None] <= first_eos
    return torch.where(is_eos.any(dim=1, keepdim=True), through_eos, fallback)


def _as_prompt_list(prompts: list[str] | str) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings, got {type(bad[0]).__name__}: {bad[0]!r}")
    return prompts


class TextEncoder(nn.Module):
    """Base of the text encoders.

    Attributes:
        width: feature size ``D``.
        context_length: token sequence length ``L``.
        trainable: whether the encoder is trained with the diffusion model; frozen otherwise.
        config: the JSON-able config that rebuilds this encoder with :func:`build_text_encoder`.
    """

    width: int
    context_length: int
    trainable: bool
    config: dict[str, Any]
    start_id: int
    end_id: int
    pad_id: int

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.trainable = config["trainable"]

    def _finish_init(self) -> None:
        """Freeze the encoder unless it is trainable; call at the end of a subclass ``__init__``."""
        if not self.trainable:
            self.requires_grad_(False)
        self.train(self.trainable)

    def set_trainable(self, trainable: bool) -> "TextEncoder":
        """Make the encoder trainable (``True``) or frozen (``False``), recording it in ``config``."""
        self.trainable = self.config["trainable"] = bool(trainable)
        self.requires_grad_(self.trainable)
        self.train(self.trainable)
        return self

    def train(self, mode: bool = True) -> "TextEncoder":
        """Switch train/eval mode; a frozen encoder always stays in eval mode."""
        return super().train(mode and self.trainable)

    @property
    def segment_separator(self) -> str | None:
        return self.config.get("segment_separator")

    def set_segment_separator(self, separator: str | None) -> "TextEncoder":
        """Encode prompts segment by segment at ``separator`` from now on (None: whole), recorded in
        ``config``; the weights are unchanged."""
        _check_segment_separator(separator)
        self.config["segment_separator"] = separator
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids ``[B, L]`` (long, CPU), padded with ``pad_id``; over-long prompts are truncated
        keeping an end token. With a ``segment_separator`` each row holds the segments end to end."""
        prompts = _as_prompt_list(prompts)
        if self.segment_separator is None:
            return self._tokenize_whole(prompts)
        rows = torch.full((len(prompts), self.context_length), self.pad_id, dtype=torch.long)
        for row, prompt in zip(rows, prompts):
            ids = [i for part in split_segments(prompt, self.segment_separator) for i in self._segment_ids(part)]
            ids = ids[: self.context_length]
            ids[-1] = self.end_id
            row[: len(ids)] = torch.tensor(ids)
        return rows

    def token_count(self, prompt: str) -> int:
        """Tokens ``prompt`` takes before truncation, start and end tokens (of every segment) included;
        more than ``context_length`` means :meth:`tokenize` truncates it."""
        return sum(len(self._segment_ids(part)) for part in split_segments(prompt, self.segment_separator))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens [B, L]`` -> ``(features float [B, L, D], mask bool [B, L])``; a row with several
        segments (each opened by ``start_id``) has each encoded on its own."""
        if self.segment_separator is None:
            return self._encode_rows(tokens)
        return self._encode_segments(tokens)

    def _encode_segments(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut each row of ``tokens [B, L]`` at its start tokens into rows of their own ``[N, S]``,
        encode those, and put their features and masks back where their tokens were."""
        batch, length = tokens.shape
        row, start = (tokens == self.start_id).nonzero(as_tuple=True)  # row-major: segments in order
        if row.numel() == 0:  # an empty batch: nothing to cut
            return self._encode_rows(tokens)
        same_row_next = torch.cat([row[1:] == row[:-1], row.new_zeros(1, dtype=torch.bool)])
        end = torch.where(same_row_next, torch.cat([start[1:], start[-1:]]), torch.full_like(start, length))
        span = int((end - start).max())
        offset = torch.arange(span, device=tokens.device)
        position = start[:, None] + offset  # [N, S]
        inside = position < end[:, None]
        segments = torch.where(inside, tokens[row[:, None], position.clamp(max=length - 1)], self.pad_id)
        segment_features, segment_mask = self._encode_rows(segments)
        features = segment_features.new_zeros(batch, length, segment_features.shape[-1])
        mask = torch.zeros(batch, length, dtype=torch.bool, device=tokens.device)
        rows = row[:, None].expand_as(position)[inside]
        features[rows, position[inside]] = segment_features[inside]
        mask[rows, position[inside]] = segment_mask[inside]
        return features, mask

    def _tokenize_whole(self, prompts: list[str]) -> torch.Tensor:
        """Token ids ``[B, L]`` of whole prompts (the backend's own tokenizer call)."""
        raise NotImplementedError

    def _segment_ids(self, text: str) -> list[int]:
        """The untruncated token ids of ``text`` alone, start and end tokens included."""
        raise NotImplementedError

    def _encode_rows(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens [B, L]``, one prompt per row -> ``(features [B, L, D], mask [B, L])``."""
        raise NotImplementedError

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize ``prompts`` and run the encoder on its device (without gradients when frozen).

        Returns ``(features [B, L, D], mask [B, L])``.
        """
        tokens = self.tokenize(prompts).to(self.device)
        with contextlib.nullcontext() if self.trainable else torch.no_grad():
            return self(tokens)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
        save_component(directory, self, self.config)


class _OpenCLIPTextTower(nn.Module):
    """The text parts of an open_clip model: embeddings, causal transformer, final layer norm."""

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        self.token_embedding = source.token_embedding
        self.positional_embedding = source.positional_embedding
        self.transformer = source.transformer
        self.ln_final = source.ln_final
        self.register_buffer("attn_mask", source.attn_mask, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, L]`` -> per-token states ``[B, L, D]`` after ``ln_final``."""
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        attn_mask = None if self.attn_mask is None else self.attn_mask[:length, :length].to(x.dtype)
        return self.ln_final(self.transformer(x, attn_mask=attn_mask))


class OpenCLIPTextEncoder(TextEncoder):
    """open_clip text tower (a named architecture or a small custom one); see the module docstring."""

    def __init__(self, config: dict[str, Any], load_pretrained: bool = True) -> None:
        """``load_pretrained=False`` builds a named architecture without fetching ``pretrained`` weights."""
        import open_clip

        config = OpenCLIPTextConfig.from_dict(config).to_dict()
        super().__init__(config)
        if config["model_name"]:
            self.tower, self._tokenizer = self._build_named(config, load_pretrained)
        else:
            config["context_length"] = config["context_length"] or open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH
            self.tower = _OpenCLIPTextTower(
                open_clip.transformer.TextTransformer(
                    context_length=config["context_length"],
                    vocab_size=config["vocab_size"],
                    width=config["width"],
                    heads=config["heads"],
                    layers=config["layers"],
                    output_dim=None,
                )
            )
            self._tokenizer = open_clip.SimpleTokenizer(context_length=config["context_length"])
        if config["vocab_size"] < len(self._tokenizer.encoder):
            raise ConfigError(
                f"text_encoder.vocab_size ({config['vocab_size']}) is smaller than the tokenizer's vocabulary "
                f"({len(self._tokenizer.encoder)}); use vocab_size: {len(self._tokenizer.encoder)}"
            )
        self.width = config["width"]
        self.context_length = config["context_length"]
        self.start_id, self.end_id, self.pad_id = self._tokenizer.sot_token_id, self._tokenizer.eot_token_id, 0
        # token_rows [vocab_size] long: each token id's row of the embedding table; None: the id itself
        self.register_buffer("token_rows", None, persistent=False)
        if config["vocabulary"] is not None:
            self._keep_tokens(self._checked_vocabulary(config["vocabulary"]))
        self._finish_init()

    @property
    def vocabulary(self) -> list[int] | None:
        """The token ids that have an embedding of their own (sorted), or None when all do."""
        return self.config["vocabulary"]

    def _checked_vocabulary(self, vocabulary: list[int]) -> list[int]:
        size = self.config["vocab_size"]  # the config's type check has made it a list of ints
        if vocabulary != sorted(set(vocabulary)) or (vocabulary and not 0 <= vocabulary[0] <= vocabulary[-1] < size):
            raise ConfigError(f"text_encoder.vocabulary must be distinct token ids in [0, {size}), in increasing order")
        special = sorted({self.start_id, self.end_id, self.pad_id} - set(vocabulary))
        if special:
            raise ConfigError(f"text_encoder.vocabulary must hold the start, end and pad token ids; it lacks {special}")
        return vocabulary

    def restrict_vocabulary(self, prompts: list[str]) -> int:
        """Keep the token embeddings that ``prompts`` use (and the start, end and pad tokens); every
        other token id reads one shared unknown embedding, the mean of the rows dropped. Features of
        prompts made of kept tokens are unchanged; an already restricted encoder only drops more.
        Returns the number of token ids kept."""
        used = set(self.tokenize(_as_prompt_list(prompts)).unique().tolist()) | {self.start_id, self.end_id, self.pad_id}
        if self.vocabulary is not None:
            used &= set(self.vocabulary)  # a token already read as unknown stays unknown
        self._keep_tokens(sorted(used))
        return len(used)

    def _keep_tokens(self, keep: list[int]) -> None:
        """Rebuild the embedding table as the rows of ``keep`` (in that order) plus an unknown row last,
        and record ``keep`` as the vocabulary."""
        old = self.tower.token_embedding.weight.detach()
        rows = self._embedding_rows(torch.tensor(keep, device=old.device))
        dropped = torch.ones(old.shape[0], dtype=torch.bool, device=old.device)
        dropped[rows] = False
        unknown = old[dropped].mean(dim=0) if dropped.any() else old.new_zeros(old.shape[1])
        table = nn.Embedding(len(keep) + 1, old.shape[1], device=old.device, dtype=old.dtype)
        table.weight.data.copy_(torch.cat([old[rows], unknown[None]]))
        table.weight.requires_grad_(self.tower.token_embedding.weight.requires_grad)
        self.tower.token_embedding = table
        token_rows = torch.full((self.config["vocab_size"],), len(keep), dtype=torch.long, device=old.device)
        token_rows[torch.tensor(keep, device=old.device)] = torch.arange(len(keep), device=old.device)
        self.token_rows = token_rows
        self.config["vocabulary"] = list(keep)

    def _embedding_rows(self, tokens: torch.Tensor) -> torch.Tensor:
        """The embedding-table row of each token id (same shape as ``tokens``)."""
        return tokens if self.token_rows is None else self.token_rows[tokens]

    @staticmethod
    def _build_named(config: dict[str, Any], load_pretrained: bool) -> tuple[_OpenCLIPTextTower, Any]:
        """Build ``config["model_name"]``, keep its text tower and fill the derived keys of ``config``."""
        import open_clip

        name = config["model_name"]
        model_config = open_clip.get_model_config(name)
        if model_config is None:
            raise ConfigError(f"unknown open_clip model_name {name!r}; open_clip.list_models() lists the known ones")
        text_cfg = model_config.get("text_cfg", {})
        if text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name"):
            raise ConfigError(
                f"open_clip model {name!r} uses a Hugging Face text tower or tokenizer; use backend: transformers"
            )
        pretrained = config["pretrained"] if load_pretrained else None
        model = open_clip.create_model(name, pretrained=pretrained or None)
        source = getattr(model, "text", model)
        if not all(hasattr(source, part) for part in ("token_embedding", "positional_embedding", "ln_final")):
            raise ConfigError(
                f"open_clip model {name!r} has no CLIP-style text transformer; "
                "use backend: transformers for Hugging Face text towers"
            )
        max_length = source.positional_embedding.shape[0]
        config["context_length"] = config["context_length"] or max_length
        if config["context_length"] > max_length:
            raise ConfigError(f"text_encoder.context_length must be at most {max_length} for {name!r}")
        tokenizer = open_clip.get_tokenizer(name, context_length=config["context_length"])
        if not isinstance(tokenizer, open_clip.SimpleTokenizer):
            raise ConfigError(
                f"open_clip model {name!r} uses {type(tokenizer).__name__}; only SimpleTokenizer models are supported"
            )
        tower = _OpenCLIPTextTower(source)
        config["width"] = tower.transformer.width
        config["layers"] = tower.transformer.layers
        config["heads"] = text_cfg.get("heads", OpenCLIPTextConfig.heads)
        config["vocab_size"] = tower.token_embedding.num_embeddings
        return tower, tokenizer

    def _tokenize_whole(self, prompts: list[str]) -> torch.Tensor:
        """Token ids ``[B, L]``: start token, BPE tokens, end token, zero padding."""
        return self._tokenizer(prompts, context_length=self.context_length)

    def _segment_ids(self, text: str) -> list[int]:
        return [self.start_id, *self._tokenizer.encode(text), self.end_id]

    def _encode_rows(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = _real_token_mask(tokens, self.end_id, pad_id=self.pad_id)
        return self.tower(self._embedding_rows(tokens)), mask


class TransformersTextEncoder(TextEncoder):
    """Hugging Face ``CLIPTextModel`` with its tokenizer; see the module docstring."""

    def __init__(self, config: dict[str, Any], source: str | os.PathLike | None = None) -> None:
        """Load the model and tokenizer from ``source`` (default: ``config["name_or_path"]``).

        A ``source`` other than the default is a folder written by :meth:`save_pretrained`; its
        weights are read from safetensors only.
        """
        from transformers import AutoTokenizer, CLIPTextModel

        config = TransformersTextConfig.from_dict(config).to_dict()
        if not config["name_or_path"]:
            raise ConfigError("text_encoder.name_or_path is required for backend: transformers (a folder or hub id)")
        super().__init__(config)
        saved = source is not None
        source = source if saved else config["name_or_path"]
        self.model = CLIPTextModel.from_pretrained(source, use_safetensors=True if saved else None).float()
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        max_positions = self.model.config.max_position_embeddings
        config["context_length"] = config["context_length"] or min(self.tokenizer.model_max_length, max_positions)
        if config["context_length"] > max_positions:
            raise ConfigError(f"text_encoder.context_length must be at most {max_positions} for this model")
        self.width = self.model.config.hidden_size
        self.context_length = config["context_length"]
        self.start_id, self.end_id = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        self.pad_id = self.end_id if self.tokenizer.pad_token_id is None else self.tokenizer.pad_token_id
        self._finish_init()

    def _tokenize_whole(self, prompts: list[str]) -> torch.Tensor:
        """Token ids ``[B, L]``, padded to ``context_length`` and truncated keeping the end token."""
        encoded = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        return encoded["input_ids"]

    def _segment_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, truncation=False)["input_ids"]

    def _encode_rows(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens [B, L]`` -> ``(last_hidden_state [B, L, D], mask [B, L])``."""
        mask = _real_token_mask(tokens, self.end_id, self.pad_id)
        features = self.model(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        return features, mask

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write a Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer files) plus
        ``text_encoder.json`` (this encoder's config) into ``directory``."""
        directory = Path(directory)
        self.model.save_pretrained(directory, max_shard_size="1000GB")
        self.tokenizer.save_pretrained(directory)
        save_json(directory / TRANSFORMERS_CONFIG_NAME, self.config)

    @classmethod
    def from_folder(cls, directory: str | os.PathLike, config: dict[str, Any]) -> "TransformersTextEncoder":
        """Rebuild an encoder saved by :meth:`save_pretrained` from its folder alone."""
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise CheckpointError(f"missing file: {directory / name}")
        try:
            with safe_open(directory / WEIGHTS_NAME, framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"corrupt weights file {directory / WEIGHTS_NAME}: {err}") from None
        try:
            return cls(config, source=directory)
        except (OSError, ValueError, TypeError) as err:
            raise CheckpointError(f"cannot load the Hugging Face model or tokenizer in {directory}: {err}") from None


_BACKENDS = {"open_clip": OpenCLIPTextEncoder, "transformers": TransformersTextEncoder}


def _backend(config: dict[str, Any]) -> str:
    backend = config.get("backend")
    if backend not in _BACKENDS:
        raise ConfigError(f"text_encoder.backend must be one of {sorted(_BACKENDS)}, got {backend!r}")
    return backend


def build_text_encoder(config: dict[str, Any]) -> TextEncoder:
    """Build the encoder that ``config`` describes (e.g. the ``text_encoder`` section of a YAML config).

    ``{"from_pretrained": FOLDER, "trainable": bool}`` instead loads an encoder saved by
    :meth:`TextEncoder.save_pretrained` (for example the text tower of a CLIP trained by
    ``train.clip``), frozen unless ``trainable``; a ``segment_separator`` key there replaces the saved
    encoder's (the same weights, reading prompts segment by segment).
    """
    if "from_pretrained" in config:
        unknown = sorted(set(config) - {"from_pretrained", "trainable", "segment_separator"})
        if unknown:
            raise ConfigError(
                "a text_encoder section with from_pretrained takes only trainable and segment_separator "
                f"besides it, not {unknown}; the architecture comes from the saved encoder"
            )
        encoder = load_text_encoder(config["from_pretrained"]).set_trainable(config.get("trainable", False))
        if "segment_separator" in config:
            encoder.set_segment_separator(config["segment_separator"])
        return encoder
    return _BACKENDS[_backend(config)](dict(config))


def load_text_encoder(directory: str | os.PathLike) -> TextEncoder:
    """Load an encoder saved by :meth:`TextEncoder.save_pretrained`, without network or unpickling.

    A missing or corrupt file raises :class:`~guided_diffusion.serialization.CheckpointError` naming it.
    """
    directory = Path(directory)
    if (directory / TRANSFORMERS_CONFIG_NAME).is_file():
        config_path = directory / TRANSFORMERS_CONFIG_NAME
        config = load_json(config_path)
    else:
        config_path = directory / CONFIG_NAME
        config = load_component_config(directory)
    try:
        backend = _backend(config)
    except ValueError as err:
        raise CheckpointError(f"bad text encoder config in {config_path}: {err}") from None
    if backend == "transformers":
        return TransformersTextEncoder.from_folder(directory, config)
    return load_component_weights(directory, OpenCLIPTextEncoder(config, load_pretrained=False))
