"""Collapse metrics against naive loops, hand-computed values and the two limiting cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslengine.eval.collapse import (
    alignment,
    collapse_metrics,
    effective_rank,
    embedding_std,
    uniformity,
)

torch.set_num_threads(1)


def _unit_rows(z: np.ndarray) -> list[list[float]]:
    out = []
    for row in z.tolist():
        norm = math.sqrt(sum(v * v for v in row))
        out.append([v / norm for v in row])
    return out


def test_embedding_std_matches_loop():
    z = np.random.default_rng(0).normal(size=(7, 5)) + 0.3
    rows = _unit_rows(z)
    stds = []
    for j in range(5):
        col = [r[j] for r in rows]
        m = sum(col) / len(col)
        stds.append(math.sqrt(sum((v - m) ** 2 for v in col) / (len(col) - 1)))
    assert embedding_std(torch.from_numpy(z)).item() == pytest.approx(sum(stds) / 5, rel=1e-10)


def test_effective_rank_hand_values():
    # a centred matrix with singular values (3, 1): p = (3/4, 1/4)
    u = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]]) / 2.0  # orthonormal
    assert torch.allclose(u.sum(0), torch.zeros(2))  # columns orthogonal to 1: already centred
    z = u @ torch.diag(torch.tensor([3.0, 1.0])) @ torch.tensor([[0.6, 0.8], [-0.8, 0.6]])
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert effective_rank(z).item() == pytest.approx(expected, rel=1e-5)
    # shifting every row by the same vector changes nothing: the matrix is centred first
    assert effective_rank(z + 5.0).item() == pytest.approx(expected, rel=1e-5)
    # k equal singular values -> exactly k. QR of [1, random]: columns 1..3 are orthonormal
    # and orthogonal to the ones vector, i.e. already centred
    g = torch.Generator().manual_seed(0)
    a = torch.cat([torch.ones(50, 1), torch.randn(50, 3, generator=g)], 1).double()
    u3 = torch.linalg.qr(a).Q[:, 1:]
    v3 = torch.linalg.qr(torch.randn(10, 3, generator=g).double()).Q.T  # 3 orthonormal rows
    assert effective_rank(2.5 * u3 @ v3).item() == pytest.approx(3.0, rel=1e-9)


def test_effective_rank_matches_numpy_entropy():
    z = np.random.default_rng(1).normal(size=(40, 6)) * np.array([5, 4, 3, 2, 1, 0.5])
    s = np.linalg.svd(z - z.mean(0), compute_uv=False)
    p = s / s.sum()
    expected = math.exp(-sum(pk * math.log(pk) for pk in p))
    assert effective_rank(torch.from_numpy(z)).item() == pytest.approx(expected, rel=1e-10)
    assert effective_rank(torch.from_numpy(z).float()).dtype == torch.float32


def test_alignment_and_uniformity_loops():
    rng = np.random.default_rng(2)
    z1, z2 = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    a, b = _unit_rows(z1), _unit_rows(z2)
    align = (
        sum(
            math.sqrt(sum((x - y) ** 2 for x, y in zip(p, q, strict=True))) ** 3
            for p, q in zip(a, b, strict=True)
        )
        / 6
    )
    assert alignment(torch.from_numpy(z1), torch.from_numpy(z2), alpha=3).item() == (
        pytest.approx(align, rel=1e-10)
    )
    terms = [
        math.exp(-1.5 * sum((x - y) ** 2 for x, y in zip(a[i], a[j], strict=True)))
        for i in range(6)
        for j in range(i + 1, 6)
    ]
    assert uniformity(torch.from_numpy(z1), t=1.5).item() == pytest.approx(
        math.log(sum(terms) / len(terms)), rel=1e-10
    )


def test_alignment_and_uniformity_hand_values():
    # orthogonal unit pair: ||a - b||^2 = 2
    assert alignment(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 0.5]])).item() == (
        pytest.approx(2.0)
    )
    # antipodal pair: squared distance 4, log exp(-2 * 4) = -8
    assert uniformity(torch.tensor([[1.0, 0.0], [-2.0, 0.0]])).item() == pytest.approx(-8.0)
    # three points 120 degrees apart on the circle: squared chord 3 each -> -6
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=torch.float64)
    tri = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert uniformity(tri).item() == pytest.approx(-6.0, rel=1e-12)
    # far apart on a huge t: no underflow to log(0)
    assert uniformity(tri, t=1000.0).item() == pytest.approx(-3000.0, rel=1e-12)


def test_constant_encoder_is_collapsed():
    z = torch.full((256, 64), 0.37) + torch.linspace(-1, 1, 64)  # every row the same vector
    m = collapse_metrics(z, z.clone())
    assert m["embed_std"] == pytest.approx(0.0, abs=1e-6)
    assert m["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert m["alignment"] == pytest.approx(0.0, abs=1e-10)
    assert m["uniformity"] == pytest.approx(0.0, abs=1e-6)
    assert m["embed_std_ref"] == pytest.approx(1 / 8)


def test_gaussian_embeddings_are_spread():
    g = torch.Generator().manual_seed(3)
    d = 32
    z1, z2 = torch.randn(2048, d, generator=g), torch.randn(2048, d, generator=g)
    m = collapse_metrics(z1, z2)
    assert m["embed_std"] == pytest.approx(1 / math.sqrt(d), rel=0.1)
    assert 0.95 * d < m["effective_rank"] <= d
    # independent views: E||a - b||^2 = 2 for independent points on the sphere
    assert m["alignment"] == pytest.approx(2.0, rel=0.05)
    assert m["uniformity"] < -1.5


def test_low_rank_embeddings():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(1024, 4, generator=g) @ torch.randn(4, 64, generator=g)  # rank 4 in 64-d
    assert 2.0 < effective_rank(z).item() < 4.0 + 1e-6


def test_half_precision_and_bad_shapes():
    z = torch.randn(16, 8)
    assert embedding_std(z.half()).item() == pytest.approx(embedding_std(z).item(), rel=1e-2)
    with pytest.raises(ValueError):
        embedding_std(torch.randn(1, 8))
    with pytest.raises(ValueError):
        alignment(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(ValueError):
        effective_rank(torch.randn(8))
