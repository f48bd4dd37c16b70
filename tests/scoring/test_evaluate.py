import json

import pytest
import torch

from clipmem.scoring.evaluate import retrieval


def test_retrieval_counts_hits_by_caption_text():
    # two images share caption 0; image 2 owns caption 1
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=1)
    table = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05], [0.0, 1.0]]), dim=1)
    out = retrieval(image, table, [{0}, {0}, {1}])
    assert out["i2t_r1"] == 1.0 and out["t2i_r1"] == 1.0


def test_retrieval_on_a_case_with_known_partial_answers():
    """Four images, four captions (text i belongs to image i). Similarities are set by hand:
    image 3's best caption is caption 0 (a miss at R@1, a hit at R@2), and caption 2's best image is
    image 1 (a miss), so i2t R@1 = 3/4 and t2i R@1 = 3/4; with four candidates R@5 is 1 both ways."""
    sims = torch.tensor([[0.9, 0.1, 0.0, 0.2],
                         [0.0, 0.8, 0.7, 0.0],
                         [0.1, 0.0, 0.6, 0.0],
                         [0.5, 0.0, 0.0, 0.4]])
    # unit image vectors e_i and caption vectors whose dot products with them are the table above
    image, table = torch.eye(4), sims.T.contiguous()
    out = retrieval(image, table, [{0}, {1}, {2}, {3}])
    assert out == {"i2t_r1": 0.75, "i2t_r5": 1.0, "t2i_r1": 0.75, "t2i_r5": 1.0}
    # captions the run's table holds but no image owns are not retrieval candidates
    padded = torch.cat([table, torch.full((1, 4), 5.0)])
    assert retrieval(image, padded, [{0}, {1}, {2}, {3}]) == out


def test_retrieval_at_5_counts_a_hit_at_rank_5_and_a_miss_at_rank_6():
    """Six images, six captions; every image prefers captions in the order 0..5 (caption j scores 1 - j/10)
    and so does every caption: image i's own caption sits at rank i + 1, so R@1 = 1/6 and R@5 = 5/6."""
    sims = (1 - torch.arange(6) / 10).repeat(6, 1)
    sims = sims + torch.arange(6)[:, None] * 1e-3  # captions also prefer the later images a little
    image, table = torch.eye(6), sims.T.contiguous()
    out = retrieval(image, table, [{i} for i in range(6)])
    assert out["i2t_r1"] == pytest.approx(1 / 6) and out["i2t_r5"] == pytest.approx(5 / 6)
    # every caption's best image is image 5: only caption 5 finds its own at rank 1; images 1..5 at rank <= 5
    assert out["t2i_r1"] == pytest.approx(1 / 6) and out["t2i_r5"] == pytest.approx(5 / 6)


def test_utility_metrics_written(tiny_run):
    run, _ = tiny_run
    metrics = json.loads(run.metrics.read_text())
    for name in ("f", "g"):
        assert {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "zeroshot_shape", "zeroshot_colour"} <= set(metrics[name])
        # S_E has 60 images and some 260 distinct captions: chance R@1 is below 0.02, R@5 below 0.1
        assert metrics[name]["i2t_r1"] > 0.1 and metrics[name]["t2i_r1"] > 0.1
        assert metrics[name]["i2t_r5"] > max(0.3, metrics[name]["i2t_r1"])
    # a trained model beats chance (1/8 colours) at zero-shot colour, with a margin
    assert metrics["f"]["zeroshot_colour"] > 0.2
