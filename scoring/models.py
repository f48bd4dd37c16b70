"""Model configs and the one factory that builds f and g.

clipmem ships small open_clip configs as JSON in `model_configs/` and registers
them with open_clip, so `clipmem-tiny` and `clipmem-demo` work wherever an
open_clip name does. Any open_clip architecture name (`ViT-B-32`, `RN50`, ...) or
a path to a JSON config is accepted too; models are randomly initialised, since
nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer

from scoring.errors import ClipmemError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

REQUIRED_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


def resolve_config(name_or_path: str) -> dict:
    """The open_clip model config (a fresh copy) for a registered name or a JSON file."""
    path = Path(name_or_path)
    if name_or_path.endswith(".json"):
        if not path.is_file():
            raise ClipmemError(f"model config file {path} does not exist")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ClipmemError(f"model config {path} is not valid JSON ({exc.msg})") from None
        cfg = cfg.get("model_cfg", cfg)
        missing = [k for k in REQUIRED_KEYS if k not in cfg]
        if missing:
            raise ClipmemError(f"model config {path} lacks {', '.join(missing)}")
        return cfg
    cfg = open_clip.get_model_config(name_or_path)
    if cfg is None:
        ours = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))
        raise ClipmemError(
            f"unknown model '{name_or_path}': not an open_clip architecture nor a .json config "
            f"(clipmem's own: {', '.join(ours)}; open_clip has {len(open_clip.list_models())}, "
            "see `python -c 'import open_clip; print(open_clip.list_models())'`)"
        )
    if "hf_model_name" in cfg.get("text_cfg", {}) or "hf_tokenizer_name" in cfg.get("text_cfg", {}):
        raise ClipmemError(f"model '{name_or_path}' uses a Hugging Face text tower, which needs a download")
    return copy.deepcopy(cfg)


def create_model(cfg: dict, seed: int) -> torch.nn.Module:
    """Build a randomly initialised open_clip model from a config, seeded."""
    cfg = copy.deepcopy(cfg)
    custom_text = cfg.pop("custom_text", False)
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(**cfg)
    return model


def image_size_of(cfg: dict) -> int:
    size = cfg["vision_cfg"].get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def context_length_of(cfg: dict) -> int:
    return int(cfg["text_cfg"].get("context_length", 77))


@dataclass
class Vocabulary:
    """Maps open_clip token ids to model ids.

    `kept` is None for the full 49,408-token vocabulary, else the sorted open_clip
    ids the data uses. Sorting keeps end-of-text the largest id, which text
    pooling relies on (it takes the argmax token).
    """

    kept: list[int] | None = None

    @property
    def size(self) -> int | None:
        return None if self.kept is None else len(self.kept)

    def to_json(self) -> dict:
        return {"kept": self.kept}

    @classmethod
    def from_json(cls, raw: dict) -> "Vocabulary":
        return cls(kept=raw.get("kept"))


def tokenize(texts: list[str], context_length: int) -> tuple[torch.Tensor, int]:
    """open_clip token ids (N, context_length) and how many texts were truncated."""
    tokenizer = SimpleTokenizer(context_length=context_length)
    raw = [tokenizer.encode(t) for t in texts]
    truncated = sum(1 for r in raw if len(r) + 2 > context_length)
    return tokenizer(texts, context_length=context_length), truncated


def build_vocabulary(tokens: torch.Tensor) -> Vocabulary:
    kept = sorted(set(np.unique(tokens.numpy()).tolist()) | {0})
    return Vocabulary(kept=kept)


def apply_vocabulary(tokens: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
    """Re-index open_clip token ids into the model's vocabulary; unknown ids are an error."""
    if vocab.kept is None:
        return tokens
    lookup = torch.full((49408,), -1, dtype=torch.long)
    lookup[torch.tensor(vocab.kept)] = torch.arange(len(vocab.kept))
    out = lookup[tokens]
    if (out < 0).any():
        raise ClipmemError("a caption uses a token outside the run's compacted vocabulary")
    return out


def with_vocabulary(cfg: dict, vocab: Vocabulary) -> dict:
    cfg = copy.deepcopy(cfg)
    if vocab.kept is not None:
        cfg["text_cfg"]["vocab_size"] = len(vocab.kept)
    return cfg


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
