import torch

from clipmem.scoring.config import AugmentConfig
from clipmem.scoring.transform import augment, normalize, sample_views


def test_views_seeded_and_disabled_is_identity():
    pixels = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    cfg = AugmentConfig(max_shift=2)
    a = sample_views(4, cfg, torch.Generator().manual_seed(0))
    b = sample_views(4, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(augment(pixels, a, 2), augment(pixels, b, 2))
    off = sample_views(4, AugmentConfig(enabled=False), torch.Generator().manual_seed(0))
    assert torch.allclose(augment(pixels, off, 0), normalize(pixels), atol=1e-6)


def test_shift_moves_content_without_flipping():
    pixels = torch.zeros((1, 3, 8, 8), dtype=torch.uint8)
    pixels[0, :, 4, 1] = 255  # a dot on the left
    params = sample_views(1, AugmentConfig(max_shift=1, brightness=0, contrast=0), torch.Generator().manual_seed(0))
    params.shift[:] = torch.tensor([[1, 2]])  # no vertical shift, content moves one pixel left
    out = augment(pixels, params, 1)
    assert out[0, 0].argmax().item() == 4 * 8 + 0
