"""Fine-tuning from pretrained weights (--pretrained) and locking a tower (--lock-image, --lock-text).

The weights are read as open_clip's `create_model_and_transforms(..., pretrained=FILE)` reads a file: an open_clip
trainer checkpoint ({'state_dict': ...}) or a plain state dict, keys possibly prefixed 'module.'. An open_clip
pretrained tag ('openai', 'laion2b_s34b_b79k', ...) names weights on the hub, which clipmem never downloads from, so
a tag is refused before anything is written. The text tower keeps the vocabulary it was trained with: the token
embedding's rows decide which (open_clip's full one, or a clipmem run's compacted one, read from the vocab.json of
the run the file belongs to). Locks call the model's own lock_image_tower / lock_text_tower, as open_clip_train does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from clipmem.scoring.config import TrainConfig
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.models import Vocabulary, create_model, resolve_config, with_vocabulary
from clipmem.scoring.rundir import RunDir, file_sha256
from clipmem.scoring.train import fit_state_dict, read_state_dict

TOKEN_EMBEDDING_KEYS = ("token_embedding.weight", "text.token_embedding.weight")  # CLIP, CustomTextCLIP


@dataclass(frozen=True)
class Pretrained:
    """A checked pretrained source: the file, its SHA-256, its weights and the vocabulary its text tower reads."""

    path: Path
    sha256: str
    state: dict
    vocab: Vocabulary
    vocab_file: Path | None  # the run's vocab.json for a compacted vocabulary, else None


def known_tags(model: str) -> tuple[set[str], set[str]]:
    """(the open_clip pretrained tags of `model`, those of every model)."""
    import open_clip

    every = open_clip.list_pretrained()
    return {tag for name, tag in every if name == model}, {tag for _, tag in every}


def locate(source: str, model: str) -> Path:
    """The checkpoint file `source` names, or a one-line refusal: a tag (the hub is out of reach), a missing file."""
    own, every = known_tags(model)
    # open_clip reads a tag of the model before a file of that name; so does the refusal
    if source in own or source.startswith("hf-hub:") or (source in every and not Path(source).exists()):
        raise ClipmemError(f"--pretrained {source} is an open_clip pretrained tag, whose weights come from the hub, "
                           "which clipmem does not download from: pass a local checkpoint file instead (an open_clip "
                           "checkpoint or a state dict)")
    path = Path(source).expanduser()
    if not path.is_file():
        raise ClipmemError(f"--pretrained {source}: no such file (give an open_clip checkpoint or a state dict)")
    return path.resolve()


def token_rows(state: dict, path: Path) -> int:
    for key in TOKEN_EMBEDDING_KEYS:
        if key in state:
            return int(state[key].shape[0])
    raise ClipmemError(f"--pretrained {path} has no text token embedding ({' or '.join(TOKEN_EMBEDDING_KEYS)}): "
                       "not the weights of an open_clip CLIP model")


def vocabulary_of(state: dict, path: Path, model_cfg: dict) -> tuple[Vocabulary, Path | None]:
    """The vocabulary the checkpoint's text tower was trained with, decided by its token embedding's rows: the
    model's full one, or a clipmem run's compacted one (its vocab.json beside the file, of as many tokens)."""
    rows = token_rows(state, path)
    full = int(model_cfg["text_cfg"].get("vocab_size", 49408))
    vocab_file = RunDir(path.parent).vocab
    if rows == full:
        return Vocabulary(), None
    if not vocab_file.is_file():
        raise ClipmemError(f"--pretrained {path}: its token embedding has {rows} rows, neither the model's full "
                           f"vocabulary ({full:,}) nor a clipmem run's compacted one (no {vocab_file.name} beside it)")
    try:
        vocab = Vocabulary.from_json(json.loads(vocab_file.read_text()))
    except (json.JSONDecodeError, AttributeError):
        raise ClipmemError(f"{vocab_file} is not a clipmem vocabulary") from None
    if vocab.size != rows:
        raise ClipmemError(f"--pretrained {path}: its token embedding has {rows} rows but {vocab_file} lists "
                           f"{vocab.size if vocab.size is not None else 'the full vocabulary'}: not that run's model")
    return vocab, vocab_file


def read_pretrained(source: str, model: str, expected_sha256: str | None = None) -> Pretrained:
    """Locate, read and check a pretrained source against the model config (its weights must fit it).

    With `expected_sha256` (the run's recorded one) a file changed since the run was configured is refused."""
    path = locate(source, model)
    sha256 = file_sha256(path)
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise ClipmemError(f"--pretrained {path} changed since the run was configured (SHA-256 {sha256[:12]}..., "
                           f"recorded {expected_sha256[:12]}...); restore it or start the run again with --overwrite")
    model_cfg = resolve_config(model)
    state = read_state_dict(path)
    vocab, vocab_file = vocabulary_of(state, path, model_cfg)
    return Pretrained(path, sha256, state, vocab, vocab_file)


def check_fits(pretrained: Pretrained, model: str) -> None:
    """Load the weights into the model they are meant for once, so a wrong --model fails before anything is written."""
    fit_state_dict(create_model(with_vocabulary(resolve_config(model), pretrained.vocab), 0), pretrained.state,
                   pretrained.path)


def check_locks(cfg: TrainConfig) -> None:
    if (cfg.lock_image or cfg.lock_text) and cfg.pretrained is None:
        raise ClipmemError("--lock-image and --lock-text keep a tower's pretrained weights: give --pretrained "
                           "(a locked tower would keep its random initial weights)")
    if not cfg.lock_image and (cfg.lock_image_unlocked_groups or cfg.lock_image_freeze_bn_stats):
        raise ClipmemError("--lock-image-unlocked-groups and --lock-image-freeze-bn-stats apply to --lock-image")
    if not cfg.lock_text and (cfg.lock_text_unlocked_layers or cfg.lock_text_freeze_layer_norm):
        raise ClipmemError("--lock-text-unlocked-layers and --lock-text-freeze-layer-norm apply to --lock-text")
    if cfg.lock_image_unlocked_groups < 0 or cfg.lock_text_unlocked_layers < 0:
        raise ClipmemError("--lock-image-unlocked-groups and --lock-text-unlocked-layers must be >= 0 (got "
                           f"{cfg.lock_image_unlocked_groups}, {cfg.lock_text_unlocked_layers})")


def apply_locks(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """The model with its towers locked as the recipe says (open_clip's own lock methods)."""
    if cfg.lock_image:
        model.lock_image_tower(unlocked_groups=cfg.lock_image_unlocked_groups,
                               freeze_bn_stats=cfg.lock_image_freeze_bn_stats)
    if cfg.lock_text:
        # open_clip 3.x always freezes a locked text layer's LayerNorms with it and asserts when asked not to
        # (open_clip_train's --lock-text without --lock-text-freeze-layer-norm fails on that assertion), so
        # clipmem passes True whatever the option says
        model.lock_text_tower(unlocked_layers=cfg.lock_text_unlocked_layers, freeze_layer_norm=True)
    return model


def describe(cfg: TrainConfig) -> dict:
    """The base and locks of a recipe, for train_summary.json (empty for a run trained from scratch)."""
    if cfg.pretrained is None:
        return {}
    locks = {key: getattr(cfg, key) for key in ("lock_image", "lock_image_unlocked_groups",
                                                 "lock_image_freeze_bn_stats", "lock_text",
                                                 "lock_text_unlocked_layers") if getattr(cfg, key)}
    return {"pretrained": {"path": cfg.pretrained, "sha256": cfg.pretrained_sha256, **({"locks": locks} if locks
                                                                                      else {})}}
