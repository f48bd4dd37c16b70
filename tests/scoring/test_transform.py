import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from constructed import plain_augment

from clipmem.scoring.config import AugmentConfig
from clipmem.scoring.transform import Normalization, augment, normalize, sample_views

# the normalisation clipmem always used, and the one a model config without mean and std still gets
_MEAN = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)


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


def test_batched_augment_is_the_plain_augmentation_bit_for_bit():
    gen = torch.Generator().manual_seed(3)
    for n, h, w, shift, enabled in [(64, 32, 32, 3, True), (7, 5, 9, 4, True), (9, 16, 16, 3, False)]:
        pixels = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=gen)
        params = sample_views(3 * n, AugmentConfig(max_shift=shift, enabled=enabled), gen)
        max_shift = shift if enabled else 0
        source = torch.randperm(3 * n, generator=gen) % n  # views of shuffled images, each image three times
        expected = plain_augment(pixels[source], params, max_shift)
        for got in (augment(pixels, params, max_shift, source), augment(pixels[source], params, max_shift)):
            assert torch.equal(got, expected)
            assert got.stride() == expected.stride()  # the towers receive the layout they always did
        # another normalisation (SigLIP's 0.5) is the same plain formulation with its constants
        half = Normalization((0.5,) * 3, (0.5,) * 3)
        assert torch.equal(augment(pixels, params, max_shift, source, half),
                           plain_augment(pixels[source], params, max_shift, mean=0.5, std=0.5))
    assert torch.equal(normalize(pixels), (pixels.float() / 255.0 - _MEAN) / _STD)
    assert torch.equal(normalize(pixels, half), (pixels.float() / 255.0 - 0.5) / 0.5)
    float_pixels = pixels.float()
    augment(float_pixels, params.select(slice(0, n)), 0)
    assert torch.equal(float_pixels, pixels.float())  # float input is read, never written in place
