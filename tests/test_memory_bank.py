"""MemoryBank: initialisation, checkpointing, sampling, and the PIRL update against a loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sslengine.models.memory_bank import MemoryBank

torch.set_num_threads(1)


def loop_update(bank: torch.Tensor, indices, features, momentum: float) -> torch.Tensor:
    """Reference: assign in order, each entry computed from the bank before the call."""
    old = bank.clone()
    new = bank.clone()
    for i, f in zip(indices.tolist(), features, strict=True):
        f = f / f.norm()
        m = momentum * old[i] + (1 - momentum) * f
        new[i] = m / m.norm()
    return new


def test_init_unit_vectors_seeded_and_in_state_dict():
    bank = MemoryBank(50, 8, seed=3)
    torch.testing.assert_close(bank.bank.norm(dim=1), torch.ones(50))
    assert torch.equal(bank.bank, MemoryBank(50, 8, seed=3).bank)
    assert not torch.equal(bank.bank, MemoryBank(50, 8, seed=4).bank)
    state = bank.state_dict()
    assert "bank" in state
    restored = MemoryBank(50, 8, seed=99)
    restored.load_state_dict(state)
    assert torch.equal(restored.bank, bank.bank)
    with pytest.raises(ValueError):
        MemoryBank(0, 8)


def test_get_returns_a_copy():
    bank = MemoryBank(10, 4)
    entries = bank.get(torch.tensor([2, 7]))
    torch.testing.assert_close(entries, bank.bank[[2, 7]])
    entries.zero_()
    assert bank.bank[2].norm() > 0.99


@pytest.mark.parametrize("momentum", [0.5, 0.9])
def test_update_matches_loop(momentum):
    bank = MemoryBank(20, 6, momentum=momentum, seed=1)
    bank.double()
    indices = torch.tensor([4, 0, 19, 7])
    features = torch.randn(4, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = loop_update(bank.bank, indices, features, momentum)
    bank.update(indices, features)
    torch.testing.assert_close(bank.bank, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(bank.bank.norm(dim=1), torch.ones(20, dtype=torch.float64))


def test_update_hand_computed():
    bank = MemoryBank(2, 2, momentum=0.5)
    bank.bank.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    bank.update(torch.tensor([0]), torch.tensor([[0.0, 5.0]]))  # feature normalised to (0, 1)
    s = 2**-0.5
    torch.testing.assert_close(bank.bank, torch.tensor([[s, s], [0.0, 1.0]]))


def test_update_duplicates_last_occurrence_wins_deterministically():
    bank = MemoryBank(8, 4, seed=5)
    before = bank.bank.clone()
    indices = torch.tensor([3, 1, 3, 3, 1])
    features = torch.randn(5, 4, generator=torch.Generator().manual_seed(6))
    expected = loop_update(before, indices, features, 0.5)
    bank.update(indices, features)
    torch.testing.assert_close(bank.bank, expected)
    # last occurrence of 3 is row 3, of 1 is row 4; earlier rows have no effect
    torch.testing.assert_close(
        bank.bank[3], F.normalize(0.5 * before[3] + 0.5 * F.normalize(features[3], dim=0), dim=0)
    )
    other = MemoryBank(8, 4, seed=5)
    other.update(indices, features)
    assert torch.equal(other.bank, bank.bank)


def test_update_takes_no_gradient():
    bank = MemoryBank(6, 3)
    features = torch.randn(2, 3, requires_grad=True)
    bank.update(torch.tensor([0, 1]), features)
    assert not bank.bank.requires_grad


def test_sample_negatives_uniform_reproducible_and_excluding():
    bank = MemoryBank(5, 3)
    shared = bank.sample_negatives(7, generator=torch.Generator().manual_seed(0))
    assert shared.shape == (7, 3)
    idx = bank.sample_indices(7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(shared, bank.bank[idx])
    exclude = torch.tensor([0, 4, 2])
    per_sample = bank.sample_indices(4000, torch.Generator().manual_seed(1), exclude=exclude)
    assert per_sample.shape == (3, 4000)
    assert (per_sample != exclude[:, None]).all()
    for row, ex in zip(per_sample, exclude.tolist(), strict=True):
        counts = torch.bincount(row, minlength=5).double()
        assert counts[ex] == 0
        others = counts[[i for i in range(5) if i != ex]] / 4000
        torch.testing.assert_close(
            others, torch.full((4,), 0.25, dtype=torch.float64), atol=0.03, rtol=0
        )
    negatives = bank.sample_negatives(4, torch.Generator().manual_seed(1), exclude=exclude)
    assert negatives.shape == (3, 4, 3)
    a = bank.sample_indices(9, torch.Generator().manual_seed(8), exclude=exclude)
    b = bank.sample_indices(9, torch.Generator().manual_seed(8), exclude=exclude)
    assert torch.equal(a, b)
