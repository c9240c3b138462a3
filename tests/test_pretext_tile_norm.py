"""The jigsaw's per-tile standardisation modes (``jigsaw.tile_norm``)."""

from __future__ import annotations

import pytest
import torch

from sslengine.data.pretext import jigsaw_batch, max_hamming_permutations


def _tiles(mode):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x[:, 0] += 2.0  # a colour cast: channel 0 brighter than the others
    perms = max_hamming_permutations(4, 9)
    return jigsaw_batch(x, perms, generator=torch.Generator().manual_seed(1), normalize_tiles=mode)


def test_modes_standardise_what_they_say():
    channel, labels = _tiles("channel")
    assert torch.allclose(channel.mean(dim=(-2, -1)), torch.zeros(()), atol=1e-5)
    assert torch.allclose(channel.std(dim=(-2, -1), unbiased=False), torch.ones(()), atol=1e-4)

    tile, labels_t = _tiles("tile")
    assert torch.equal(labels, labels_t)  # same random draws whatever the normalisation
    assert torch.allclose(tile.mean(dim=(-3, -2, -1)), torch.zeros(()), atol=1e-5)
    assert torch.allclose(tile.std(dim=(-3, -2, -1), unbiased=False), torch.ones(()), atol=1e-4)
    per_channel = tile.mean(dim=(-2, -1))  # (B, 9, C): the colour cast survives
    assert (per_channel[..., 0] > per_channel[..., 1] + 0.5).all()

    none, _ = _tiles("none")
    assert (none.mean(dim=(-2, -1))[..., 0] > 2.0).all()  # untouched values


def test_bool_spellings_and_errors():
    assert torch.equal(_tiles(True)[0], _tiles("channel")[0])
    assert torch.equal(_tiles(False)[0], _tiles("none")[0])
    with pytest.raises(ValueError, match="normalize_tiles"):
        _tiles("per-pixel")
