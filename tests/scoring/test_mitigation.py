"""The mitigation knobs change what training sees, and only that; the linear probe measures utility."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from run_fixtures import split_tiny_run, weights
from run_fixtures import train_watched as train
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.evaluate import linear_probe, probe_labels
from clipmem.scoring.pipeline import load_corpus
from clipmem.scoring.schemes import PUBLISHED_MODELS


@pytest.fixture(scope="module")
def planned(tmp_path_factory, tiny_data):
    """A split tiny run (no training): (RunDir, RunConfig)."""
    return split_tiny_run(tmp_path_factory.mktemp("mitigation") / "run", tiny_data)


def test_removed_ids_never_appear_in_a_batch_and_are_not_scored(planned, tmp_path):
    run, cfg = planned
    corpus, _, _ = load_corpus(run, cfg)
    # pairs from each trained split: shared ones leave both models, candidates f, independents g
    remove = [corpus.ids[int(corpus.rows(s)[i])] for s in ("shared", "candidate", "independent") for i in range(4)]
    _, seen, corpus = train(planned, tmp_path, remove_ids=remove)
    removed_rows = {corpus.ids.index(sid) for sid in remove}
    batch_rows = {int(r) for _, rows, _, _ in seen for r in rows}
    assert seen and not (batch_rows & removed_rows)
    # everything else of each model's training set was seen
    for name, splits in (("f", ("shared", "candidate")), ("g", ("shared", "independent"))):
        rows = {int(r) for n, rs, _, _ in seen if n == name for r in rs}
        expected = {int(r) for s in splits for r in corpus.rows(s)}
        assert rows == expected
    scored = {int(r) for s in ("candidate", "independent") for r in corpus.rows(s)}
    assert not scored & removed_rows


def test_removal_list_naming_an_unknown_or_held_out_pair_is_refused(planned):
    run, cfg = planned
    with pytest.raises(ClipmemError, match="'no-such-pair'"):
        load_corpus(run, replace(cfg, train=replace(cfg.train, remove_ids=["no-such-pair"])))
    corpus, _, _ = load_corpus(run, cfg)
    held_out = corpus.ids[int(corpus.rows("extra")[0])]
    with pytest.raises(ClipmemError, match="S_E"):
        load_corpus(run, replace(cfg, train=replace(cfg.train, remove_ids=[held_out])))


def test_zero_text_noise_is_bit_identical_and_positive_noise_is_not(planned, tmp_path):
    base, _, _ = train(planned, tmp_path / "a")
    zero, _, _ = train(planned, tmp_path / "b", text_noise=0.0)
    noisy, _, _ = train(planned, tmp_path / "c", text_noise=0.15)
    for name in PUBLISHED_MODELS:
        assert torch.equal(weights(base[name]), weights(zero[name]))
        assert not torch.allclose(weights(base[name]), weights(noisy[name]))


def test_noise_placements_train_differently_and_zero_noise_is_plain_under_both(planned, tmp_path):
    """One epoch: the same σ and seed on the normalised embedding and on the projection output give other
    weights; σ = 0 gives the weights of training without the option under either placement."""
    plain, _, _ = train(planned, tmp_path / "plain", epochs=1)
    for on in ("normalized", "projection"):
        zero, _, _ = train(planned, tmp_path / f"zero-{on}", epochs=1, text_noise=0.0, text_noise_on=on)
        assert all(torch.equal(weights(plain[n]), weights(zero[n])) for n in PUBLISHED_MODELS)
    on_unit, _, _ = train(planned, tmp_path / "unit", epochs=1, text_noise=0.15, text_noise_on="normalized")
    on_projection, _, _ = train(planned, tmp_path / "proj", epochs=1, text_noise=0.15, text_noise_on="projection")
    for name in PUBLISHED_MODELS:
        assert not torch.allclose(weights(on_unit[name]), weights(on_projection[name]))
        assert not torch.allclose(weights(on_unit[name]), weights(plain[name]))


def test_an_unknown_noise_placement_is_refused(planned, tmp_path):
    with pytest.raises(ClipmemError, match="'unit'.*normalized, projection"):
        train(planned, tmp_path, epochs=1, text_noise=0.1, text_noise_on="unit")


def test_noise_on_the_unit_embedding_moves_each_cosine_by_sigma_and_on_the_projection_by_sigma_over_its_norm():
    """The two placements in numbers, with vectors built to the shape of clipmem-demo's (64-d, per-coordinate RMS
    1.16 before normalisation): over many noise draws the image-text cosine moves by σ (normalized) and by about
    σ / (1.16 · 8) = σ / 9.28 (projection), the relation docs/experiments.md states."""
    from clipmem.scoring.train import noisy_text_forward

    gen = torch.Generator().manual_seed(0)
    d, rms, sigma, draws = 64, 1.16, 0.3, 20000
    direction = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0)
    text = direction * rms * d ** 0.5  # the projection output: RMS 1.16 per coordinate
    image = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0)

    class Fixed(torch.nn.Module):  # a model whose towers return the fixed vectors above
        logit_scale = torch.nn.Parameter(torch.zeros(()))

        def encode_image(self, images, normalize=False):
            return image.expand(len(images), d)

        def encode_text(self, tokens, normalize=False):
            out = text.expand(len(tokens), d)
            return torch.nn.functional.normalize(out, dim=-1) if normalize else out

    noise = sigma * torch.randn(draws, d, generator=gen)
    clean = float(image @ direction)
    shift = {}
    for on in ("normalized", "projection"):
        v, t, _ = noisy_text_forward(Fixed(), torch.zeros(draws), torch.zeros(draws), noise, on=on)
        shift[on] = (v * t).sum(-1) - clean
    assert torch.allclose(shift["normalized"], noise @ image, atol=1e-5)  # exactly v·n, not renormalised
    assert shift["normalized"].std().item() == pytest.approx(sigma, rel=0.03)
    assert shift["projection"].std().item() == pytest.approx(sigma / (rms * d ** 0.5), rel=0.05)


def test_text_noise_draws_are_shared_by_f_and_g_and_seeded(planned, tmp_path, monkeypatch):
    """Every noise vector a model's forward receives, recorded with the batch it goes with: in each step f and g
    get the same draw in the same slot (a shared pair, or candidate i for f and independent i for g), the draws
    are σ times standard normals that differ between slots and steps, and a second training repeats them."""
    from clipmem.scoring import train as train_module

    real = train_module.noisy_text_forward

    def recorded():
        calls = []

        def spy(model, images, text, noise, **placement):
            calls.append((model, noise.detach().clone()))
            return real(model, images, text, noise, **placement)

        monkeypatch.setattr(train_module, "noisy_text_forward", spy)
        return calls

    calls = recorded()
    once, seen, corpus = train(planned, tmp_path / "a", text_noise=0.1)
    names = {id(model): name for name, model in once.items()}
    assert len(calls) == len(seen) and [names[id(m)] for m, _ in calls] == [n for n, _, _, _ in seen]
    per_model = {name: [(rows, noise) for (n, rows, _, _), (_, noise) in zip(seen, calls) if n == name]
                 for name in PUBLISHED_MODELS}
    assert len(per_model["f"]) == len(per_model["g"]) > 1
    shared = set(corpus.rows("shared").tolist())
    candidates, independents = corpus.rows("candidate").tolist(), corpus.rows("independent").tolist()
    for (rows_f, noise_f), (rows_g, noise_g) in zip(per_model["f"], per_model["g"]):
        assert torch.equal(noise_f, noise_g)
        for a, b in zip(rows_f.tolist(), rows_g.tolist()):  # slot by slot: the same pair, or paired ones
            assert a == b if a in shared else candidates.index(a) == independents.index(b)
    noise = torch.cat([n for _, n in per_model["f"]])
    assert noise.std().item() == pytest.approx(0.1, rel=0.05) and abs(noise.mean().item()) < 0.01
    assert len(torch.unique(noise[:, 0])) == len(noise)  # a fresh draw per slot and step
    first = [n for _, n in per_model["f"]]

    calls = recorded()
    again, _, _ = train(planned, tmp_path / "b", text_noise=0.1)
    names = {id(model): name for name, model in again.items()}
    repeated = [n for m, n in calls if names[id(m)] == "f"]
    assert len(repeated) == len(first) and all(torch.equal(a, b) for a, b in zip(first, repeated))
    for name in PUBLISHED_MODELS:
        assert torch.equal(weights(once[name]), weights(again[name]))


def test_captions_per_image_limits_the_captions_training_draws(planned, tmp_path):
    _, seen, corpus = train(planned, tmp_path, captions_per_image=2)
    allowed = {}
    for r in range(len(corpus.ids)):
        allowed[r] = {tuple(corpus.tokens[i].tolist()) for i in corpus.caption_index[r, :2].tolist() if i >= 0}
    drawn = {}
    for _, rows, _, text in seen:
        for r, t in zip(rows.tolist(), text.tolist()):
            assert tuple(t) in allowed[r]
            drawn.setdefault(r, set()).add(tuple(t))
    # over two epochs some pair was seen with both of its first two captions
    assert any(len(v) == 2 for v in drawn.values())
    assert corpus.caption_count.max() == 2


def test_fixed_image_views_repeat_while_default_augmentation_does_not(planned, tmp_path):
    def images_per_row(seen):
        out = {}
        for name, rows, images, _ in seen:
            if name == "f":
                for r, img in zip(rows.tolist(), images):
                    out.setdefault(r, []).append(img)
        return out

    _, fixed, _ = train(planned, tmp_path / "a", image_views=1)
    _, fresh, _ = train(planned, tmp_path / "b")
    for r, imgs in list(images_per_row(fixed).items())[:20]:
        assert all(torch.equal(imgs[0], x) for x in imgs[1:])
    assert any(not torch.equal(imgs[0], imgs[1]) for imgs in list(images_per_row(fresh).values())[:20])


def test_image_views_without_augmentation_is_refused(planned, tmp_path):
    from clipmem.scoring.config import AugmentConfig

    with pytest.raises(ClipmemError, match="augmentation"):
        train(planned, tmp_path, image_views=2, augment=AugmentConfig(enabled=False))


def test_linear_probe_separates_separable_labels_and_not_random_ones():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=gen) * 3
    labels = torch.randint(0, 3, (400,), generator=gen)
    x = centres[labels] + torch.randn(400, 16, generator=gen)
    names = [["a", "b", "c"][i] for i in labels.tolist()]
    assert linear_probe(x[:300], names[:300], x[300:], names[300:]) > 0.95
    shuffled = [names[i] for i in torch.randperm(400, generator=gen).tolist()]
    assert linear_probe(x[:300], shuffled[:300], x[300:], shuffled[300:]) < 0.6
    # pairs without a label are left out; one class only gives no probe
    assert linear_probe(x[:300], [None] * 299 + ["a"], x[300:], names[300:]) is None


def test_linear_probe_accuracy_on_a_case_with_a_known_partial_answer():
    """Labels are the sign of the first coordinate, with a wide margin; of the four test points one carries the
    wrong label, so the probe scores exactly 3/4 whatever regularisation it picks."""
    gen = torch.Generator().manual_seed(1)
    side = torch.randint(0, 2, (60,), generator=gen) * 2 - 1
    x = torch.randn(60, 4, generator=gen) * 0.1
    x[:, 0] += side * 2.0
    names = ["pos" if s > 0 else "neg" for s in side.tolist()]
    test_x = torch.tensor([[-3.0, 0, 0, 0], [3.0, 0, 0, 0], [-2.5, 0.1, 0, 0], [2.5, 0, 0.1, 0]])
    assert linear_probe(x, names, test_x, ["neg", "pos", "neg", "neg"]) == 0.75
    # an unlabelled test point is left out: 2 of 3
    assert linear_probe(x, names, test_x, ["neg", None, "neg", "neg"]) == pytest.approx(2 / 3)


def test_probe_labels_from_the_built_in_attributes_and_from_a_label_key():
    attrs = [{"objects": [{"shape": "circle", "colour": "red"}]},
             {"objects": [{"shape": "square", "colour": "blue"}, {"shape": "circle", "colour": "red"}]},
             {"kind": "dog"}]
    assert probe_labels(attrs, None) == {"shape": ["circle", None, None], "colour": ["red", None, None]}
    assert probe_labels(attrs, "kind") == {"kind": [None, None, "dog"]}


def test_finished_run_reports_probe_accuracy(tiny_run):
    import json

    run, _ = tiny_run
    metrics = json.loads(run.metrics.read_text())
    for name in PUBLISHED_MODELS:
        # fitted on S_S, tested on S_E's single-object images: colour (8 classes) is far above chance
        assert metrics[name]["probe_colour"] > 0.6 and metrics[name]["probe_shape"] > 0.2


def test_the_noise_placement_option_is_checked_and_kept_in_the_run_config(planned, tmp_path):
    from clipmem.scoring.cli import TrainOverrides
    from clipmem.scoring.rundir import RunDir

    run, cfg = planned
    with pytest.raises(ClipmemError, match="--text-noise-on must be one of normalized, projection, got 'unit'"):
        TrainOverrides(text_noise_on="unit").apply(replace(cfg))
    chosen = TrainOverrides(text_noise=0.1, text_noise_on="projection").apply(replace(cfg))
    saved = RunDir(tmp_path / "run")
    saved.path.mkdir()
    saved.save_config(chosen)
    assert saved.load_config().train.text_noise_on == "projection"
    assert TrainOverrides(text_noise=0.1).apply(replace(cfg)).train.text_noise_on == "normalized"
