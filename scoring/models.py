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
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import open_clip
import torch
from open_clip.model import set_model_preprocess_cfg
from open_clip.tokenizer import SimpleTokenizer, basic_clean, whitespace_clean
from open_clip.transform import PreprocessCfg

from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.transform import OPENAI, normalization

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

REQUIRED_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
# open_clip's key for image preprocessing in a {"model_cfg", "preprocess_cfg"} file; in a model config, clipmem's
PREPROCESS = "preprocess_cfg"


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
        if not isinstance(cfg, dict):
            raise ClipmemError(f"model config {path} is not a JSON object")
        parts = [cfg.get("model_cfg", {}).get(PREPROCESS), cfg.get(PREPROCESS)]  # the outer one wins, as in open_clip
        if any(part is not None and not isinstance(part, dict) for part in parts):
            raise ClipmemError(f"model config {path}: preprocess_cfg must be a JSON object")
        preprocess = {k: v for part in parts if part for k, v in part.items()}
        cfg = cfg.get("model_cfg", cfg)
        missing = [k for k in REQUIRED_KEYS if k not in cfg]
        if missing:
            raise ClipmemError(f"model config {path} lacks {', '.join(missing)}")
        cfg.pop(PREPROCESS, None)
        norm = normalization(preprocess, f"model config {path}")
        if norm != OPENAI:  # kept in the model config (the run's model_config.json) only where it is not the default
            cfg[PREPROCESS] = {"mean": list(norm.mean), "std": list(norm.std)}
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
    preprocess = cfg.pop(PREPROCESS, {})
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(**cfg)
    # where open_clip's factory puts the config's preprocessing: whatever shows the model pixels reads it there
    norm = normalization(preprocess)
    size = getattr(model.visual, "image_size", PreprocessCfg.size)
    set_model_preprocess_cfg(model, {**asdict(PreprocessCfg()), "size": size, "mean": norm.mean, "std": norm.std})
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


@dataclass
class Tokenized:
    tokens: torch.Tensor        # (N, context_length) open_clip ids as the model reads them
    truncated: int              # texts longer than the context length
    encodings: list[list[int]]  # each text's open_clip ids untruncated, without start and end of text


@lru_cache(maxsize=1)
def _tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


def tokenize(texts: list[str], context_length: int) -> Tokenized:
    """open_clip's tokenisation of each text, as its tokenizer returns it, and the untruncated ids."""
    tokenizer = _tokenizer()
    encodings = [tokenizer.encode(t) for t in texts]
    truncated = sum(1 for e in encodings if len(e) + 2 > context_length)
    return Tokenized(pack(encodings, context_length), truncated, encodings)


def pack(encodings: list[list[int]], context_length: int) -> torch.Tensor:
    """Start and end of text around each encoding, cut to the context length (keeping the end), zero-padded:
    what open_clip's tokenizer returns for the texts."""
    tokenizer = _tokenizer()
    out = torch.zeros(len(encodings), context_length, dtype=torch.long)
    for i, ids in enumerate(encodings):
        row = [tokenizer.sot_token_id] + ids[: context_length - 2] + [tokenizer.eot_token_id]
        out[i, : len(row)] = torch.tensor(row)
    return out


def word_encodings(text: str) -> list[list[int]]:
    """The open_clip ids of `text` grouped by the word of the cleaned text they come from.

    Concatenated they are the tokenizer's encoding of the text: its cleaning (ftfy, HTML entities,
    lower case) runs on the whole text once and no token spans a space. Dropping a group therefore
    leaves ids the text itself uses, whereas re-tokenising a text with a word removed can clean
    differently (ftfy's mojibake repair looks at the whole text) or bring in tokens that truncation
    had cut.
    """
    tokenizer = _tokenizer()
    clean = getattr(tokenizer, "clean_fn", None) or (lambda t: whitespace_clean(basic_clean(t)).lower())
    groups = []
    for word in clean(text).split(" "):  # the cleaning collapsed all whitespace into single spaces
        ids = []
        for piece in tokenizer.pat.findall(word):
            piece = "".join(tokenizer.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(tokenizer.encoder[t] for t in tokenizer.bpe(piece).split(" "))
        if ids:
            groups.append(ids)
    return groups


def build_vocabulary(ids) -> Vocabulary:
    """The vocabulary of these open_clip ids, padding always included."""
    return Vocabulary(kept=sorted(set(int(i) for i in ids) | {0}))


def missing_ids(ids, vocab: Vocabulary) -> set[int]:
    """The ids a compacted vocabulary lacks (none for the full one)."""
    return set() if vocab.kept is None else set(ids) - set(vocab.kept)


def apply_vocabulary(tokens: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
    """Re-index open_clip token ids into the model's vocabulary; unknown ids are an error."""
    if vocab.kept is None:
        return tokens
    lookup = torch.full((49408,), -1, dtype=torch.long)
    lookup[torch.tensor(vocab.kept)] = torch.arange(len(vocab.kept))
    out = lookup[tokens]
    if (out < 0).any():
        row = int((out < 0).any(1).nonzero()[0])
        text = _tokenizer().decode([t for t in tokens[row].tolist() if t]).strip()
        raise ClipmemError(f"the text '{text}' uses a token outside the run's compacted vocabulary")
    return out


def with_vocabulary(cfg: dict, vocab: Vocabulary) -> dict:
    cfg = copy.deepcopy(cfg)
    if vocab.kept is not None:
        cfg["text_cfg"]["vocab_size"] = len(vocab.kept)
    return cfg


def uncovered_words(texts, vocab: Vocabulary) -> list[str]:
    """The words of these texts (as the tokenizer cleans them) with a token outside a compacted vocabulary, each
    once, in order of first use; none for the full vocabulary."""
    if vocab.kept is None:
        return []
    kept, found = set(vocab.kept), {}
    for text in texts:
        for ids in word_encodings(text):
            if not kept.issuperset(ids):
                found.setdefault(_tokenizer().decode(ids).strip(), None)
    return list(found)
