"""Weighted kNN (Wu et al. 2018 / DINO) against a naive python implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslengine.eval.knn import knn_classify, knn_predict

torch.set_num_threads(1)


def naive_knn(train, train_y, test, k, temperature):
    """One test point at a time, plain python lists: cosine, sort, weighted vote."""
    preds = []
    train_n = []
    for row in train.tolist():
        norm = math.sqrt(sum(v * v for v in row))
        train_n.append([v / norm for v in row])
    for q in test.tolist():
        qn = math.sqrt(sum(v * v for v in q))
        sims = [
            (sum(a * b for a, b in zip(q, t, strict=True)) / qn, i) for i, t in enumerate(train_n)
        ]
        sims.sort(reverse=True)
        votes: dict[int, float] = {}
        for s, i in sims[:k]:
            votes[int(train_y[i])] = votes.get(int(train_y[i]), 0.0) + math.exp(s / temperature)
        preds.append(max(votes, key=votes.get))
    return np.array(preds)


@pytest.mark.parametrize("temperature", [0.07, 1.0])
def test_matches_naive_double_loop(temperature):
    rng = np.random.default_rng(0)
    # continuous random features: no two similarities (hence no two class scores) tie
    train = rng.normal(size=(60, 8))
    train_y = rng.integers(0, 3, 60)
    test = rng.normal(size=(25, 8))
    test_y = rng.integers(0, 3, 25)
    ks = (1, 5, 20, 100)  # 100 > 60 is clipped to the whole memory
    preds = knn_predict(train, train_y, test, ks=ks, temperature=temperature, batch_size=7)
    acc = knn_classify(train, train_y, test, test_y, ks=ks, temperature=temperature)
    for k in ks:
        expected = naive_knn(train, train_y, test, min(k, 60), temperature)
        np.testing.assert_array_equal(preds[k].numpy(), expected)
        assert acc[f"knn_top1_k{k}"] == pytest.approx(np.mean(expected == test_y))
    assert set(acc) == {f"knn_top1_k{k}" for k in ks}


def test_temperature_changes_the_vote():
    """One very close neighbour of class 0 against three farther ones of class 1: with a low
    temperature the close one outweighs them; with a high one the majority wins."""
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [0.6, 0.8]])
    train_y = torch.tensor([0, 1, 1, 1])
    test = torch.tensor([[1.0, 0.01]])
    # exp(1/T) vs 3 exp(0.8/T) roughly: T=0.07 -> class 0, T=10 -> class 1
    assert knn_predict(train, train_y, test, ks=(4,), temperature=0.07)[4].tolist() == [0]
    assert knn_predict(train, train_y, test, ks=(4,), temperature=10.0)[4].tolist() == [1]
    # tiny temperatures would overflow exp(s / T) without the max shift
    assert knn_predict(train, train_y, test, ks=(4,), temperature=1e-4)[4].tolist() == [0]


def test_separable_clusters_are_classified_perfectly():
    rng = np.random.default_rng(1)
    centres = np.eye(4, 16) * 10.0
    train_y = np.repeat(np.arange(4), 50)
    test_y = np.repeat(np.arange(4), 20)
    train = centres[train_y] + rng.normal(scale=0.5, size=(200, 16))
    test = centres[test_y] + rng.normal(scale=0.5, size=(80, 16))
    acc = knn_classify(train.astype(np.float32), train_y, test.astype(np.float32), test_y)
    # k=200 uses the whole memory; the weights still make the own cluster win
    assert acc == {"knn_top1_k20": 1.0, "knn_top1_k200": 1.0}


def test_random_labels_give_chance():
    g = torch.Generator().manual_seed(2)
    train, test = torch.randn(2000, 32, generator=g), torch.randn(1000, 32, generator=g)
    train_y = torch.randint(0, 10, (2000,), generator=g)
    test_y = torch.randint(0, 10, (1000,), generator=g)
    acc = knn_classify(train, train_y, test, test_y, ks=(20, 200))
    for v in acc.values():
        assert 0.06 < v < 0.14  # chance is 0.1; the binomial std over 1000 points is ~0.01


def test_test_class_absent_from_train_counts_as_error():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    acc = knn_classify(train, torch.tensor([0, 1]), train.clone(), torch.tensor([0, 5]), ks=(1,))
    assert acc == {"knn_top1_k1": 0.5}


def test_rejects_bad_input():
    x, y = torch.randn(5, 3), torch.arange(5) % 2
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(x, y, x, y, temperature=0.0)
    with pytest.raises(ValueError, match="ks"):
        knn_classify(x, y, x, y, ks=(0,))
    with pytest.raises(ValueError, match="test_labels"):
        knn_classify(x, y, x, y[:3])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        knn_classify(x, y, torch.randn(5, 4), y)
    with pytest.raises(ValueError, match="num_classes"):
        knn_classify(x, y, x, y, num_classes=1)
