"""The compacted vocabulary holds every token the run's text encoder reads, on real-world captions.

Captions of a user's folder are long, carry unicode punctuation, accents, emoji and CJK, and
often exceed the context length; tower scoring reads each single-caption pair's caption with a
word dropped, which moves tokens past the context length into it.
"""

import json

import numpy as np
import pandas as pd
import torch
from open_clip.tokenizer import SimpleTokenizer
from typer.testing import CliRunner

from clipmem.scoring.attribution import _without_word
from clipmem.cli import app
from clipmem.scoring.config import SynthConfig
from clipmem.scoring.data.synthetic import generate
from clipmem.scoring.models import pack, tokenize, word_encodings
from source_fixtures import png_bytes

# texts the tokenizer cleans in ways that depend on the whole text (ftfy's mojibake repair,
# HTML entities, full-width letters, ligatures, combining accents) besides ordinary unicode
ODD_WORDS = ["a", "&amp;", "&", "amp;", "&lt;b&gt;", "Ã©", "Ã", "©", "\u00a0", "ﬁne", "ＡＢＣ", "it's", "'s", "–", "…",
             "é", "🚀", "猫", "東京", "“quoted”", "can't", "\u200b", "naïve", "cafe\u0301", "â€™", "â€", "™", "1,000",
             "3.5", "¾", "İ", "ß", "Ω", "<|endoftext|>", "clip-art"]
COMMON = ["clip-art", "of", "a", "smiling", "sun", "–", "café", "naïve", "rocket", "…", "🚀", "猫", "over", "the",
          "hills", "très", "jolie", "façade", "with", "stars", "“quoted”", "dragon", "東京", "tower", "â€™s"]


OPEN_CLIP = SimpleTokenizer()


def odd_texts(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(ODD_WORDS[j] for j in rng.integers(0, len(ODD_WORDS), rng.integers(1, 30))) for _ in range(n)]


def write_clip_art_folder(root, n=60, seed=0):
    """A folder dataset of one long description per image; every other one runs far past the context
    length (20 tokens for clipmem-tiny), its tail made of words no other caption uses."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    with open(root / "metadata.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            words = [COMMON[j] for j in rng.integers(0, len(COMMON), rng.integers(4, 12))]
            if i % 2 == 0:
                words += ["".join(chr(97 + c) for c in rng.integers(0, 26, 7)) for _ in range(12)]
            (root / f"art{i}.png").write_bytes(png_bytes(i))
            fh.write(json.dumps({"file_name": f"art{i}.png", "text": " ".join(words)}, ensure_ascii=False) + "\n")
    return root


def test_tokenize_is_open_clips_tokenizer():
    texts = odd_texts() + ["word " * 40]
    tokenized = tokenize(texts, 20)
    assert torch.equal(tokenized.tokens, OPEN_CLIP(texts, context_length=20))
    assert tokenized.encodings == [OPEN_CLIP.encode(t) for t in texts]
    assert tokenized.truncated == sum(len(OPEN_CLIP.encode(t)) > 18 for t in texts)


def test_word_groups_concatenate_to_the_encoding():
    for text in odd_texts():
        assert [i for ids in word_encodings(text) for i in ids] == OPEN_CLIP.encode(text), text


def test_dropped_word_of_plain_captions_is_the_caption_without_that_word():
    """On ordinary captions (the built-in set's) the dropped-word view is open_clip's tokens of the caption
    with that word removed, as tower scoring read it before: its scores are unchanged."""
    captions = sorted({c for rec in generate(SynthConfig(n_pairs=300, seed=1)) for c in rec["captions"]})[:400]
    captions += ["a sun – over the hills… très jolie, with 🚀 and 猫 (東京)"]
    for text in captions:
        words = text.split()
        for k in range(len(words)):
            expected = OPEN_CLIP([" ".join(words[:k] + words[k + 1:])], context_length=20)
            assert torch.equal(pack([_without_word(text, k)], 20), expected), (text, k)


def test_dropped_word_views_use_only_the_captions_tokens():
    for text in odd_texts():
        own = set(OPEN_CLIP.encode(text))
        for k in range(len(text.split())):
            assert set(_without_word(text, k)) <= own, (text, k)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


TINY = ["--model", "clipmem-tiny", "--epochs", "1", "--batch-size", "32", "--sizes", "0.7,0.1,0.1,0.1", "--views", "2"]


def test_folder_of_long_unicode_captions_runs_end_to_end(tmp_path):
    """`clipmem run --dataset folder` on long real-world captions finishes: scoring (tower views with a
    dropped word included) reads no token the compacted vocabulary lacks."""
    data = write_clip_art_folder(tmp_path / "art")
    result = invoke("run", "--out", tmp_path / "run", "--dataset", "folder", "--data", data, *TINY,
                    "--inject", "swapped=0.2,vague=0.2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "COMPLETE").is_file()
    captions = {c for caps in pd.read_parquet(tmp_path / "run" / "samples.parquet")["captions"] for c in caps}
    long = sum(len(OPEN_CLIP.encode(t)) > 18 for t in captions)
    assert long >= 25 and f"{long} distinct captions exceed the context length" in result.output
    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet")
    assert {"swapped", "vague"} <= set(scores["truth"]) and scores["mem_text"].notna().all()


def test_saved_vocabulary_lacking_tokens_is_refused_before_training(tmp_path):
    """A vocab.json left by a clipmem that kept only the tokens inside the context length (or made for other
    captions) is refused when training resumes, naming a caption, before any model trains."""
    data = write_clip_art_folder(tmp_path / "art")
    out = tmp_path / "run"
    assert invoke("split", "--out", out, "--dataset", "folder", "--data", data, "--sizes", "0.7,0.1,0.1,0.1",
                  ).exit_code == 0
    captions = [json.loads(line)["text"] for line in (data / "metadata.jsonl").read_text("utf-8").splitlines()]
    truncated_only = sorted(set(tokenize(captions, 20).tokens.unique().tolist()))
    (out / "vocab.json").write_text(json.dumps({"kept": truncated_only}))
    result = invoke("train", out, "--model", "clipmem-tiny", "--epochs", "1", "--batch-size", "32")
    assert result.exit_code == 0, result.output  # a fresh start builds its own vocabulary
    (out / "vocab.json").write_text(json.dumps({"kept": truncated_only}))
    for name in ("f.pt", "g.pt"):
        (out / name).unlink()
    log = (out / "train_log.jsonl").read_text()
    result = invoke("train", out, "--resume")
    assert result.exit_code == 2
    assert "saved vocabulary (vocab.json" in result.output and "lacks tokens of the caption '" in result.output
    assert "start the run again with --overwrite" in result.output
    assert not (out / "f.pt").exists() and (out / "train_log.jsonl").read_text() == log


def test_single_caption_baseline_vocabulary_covers_dropped_words(tmp_path):
    """--captions-per-image 1 makes every pair single-caption: its vocabulary holds every token of the first
    captions, those past the context length included."""
    from clipmem.scoring.data.sources import load_dataset
    from clipmem.scoring.data.tensors import build_corpus
    from clipmem.scoring.splits import SplitSizes, plan_splits

    dataset = load_dataset("folder", write_clip_art_folder(tmp_path / "art", n=20))
    dataset.captions[:] = [caps + ["a second caption"] for caps in dataset.captions]
    plan = plan_splits(dataset.ids, dataset.truth, SplitSizes(0.7, 0.1, 0.1, 0.1), 0)
    _, vocab = build_corpus(dataset, plan, 32, 20, captions_per_image=1, compact_vocab=True)
    firsts = [caps[0] for caps in dataset.captions]
    assert {i for t in firsts for i in OPEN_CLIP.encode(t)} <= set(vocab.kept)
    # with both captions a pair reads each as encoded only: tokens past the context are not kept
    _, both = build_corpus(dataset, plan, 32, 20, compact_vocab=True)
    assert set(both.kept) == set(tokenize(sorted({t for caps in dataset.captions for t in caps}), 20)
                                 .tokens.unique().tolist())
