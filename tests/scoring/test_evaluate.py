import json

import torch

from clipmem.scoring.evaluate import retrieval


def test_retrieval_counts_hits_by_caption_text():
    # two images share caption 0; image 2 owns caption 1
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=1)
    table = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05], [0.0, 1.0]]), dim=1)
    out = retrieval(image, table, [{0}, {0}, {1}])
    assert out["i2t_r1"] == 1.0 and out["t2i_r1"] == 1.0


def test_utility_metrics_written(tiny_run):
    run, _ = tiny_run
    metrics = json.loads(run.metrics.read_text())
    for name in ("f", "g"):
        assert {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "zeroshot_shape", "zeroshot_colour"} <= set(metrics[name])
        assert 0 <= metrics[name]["i2t_r1"] <= metrics[name]["i2t_r5"] <= 1
    # a trained model beats chance (1/8 colours) at zero-shot colour, with a margin
    assert metrics["f"]["zeroshot_colour"] > 0.2
