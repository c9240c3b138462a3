"""Every loss against an independent per-sample Python loop (values and float64 gradients), a
hand-computed tiny case, a low-temperature case and a collapse check."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sslengine.losses import (
    barlow_twins,
    info_nce,
    nt_xent,
    pirl_nce,
    pretext_cross_entropy,
    sinkhorn_knopp,
    swav_loss,
)

torch.set_num_threads(1)
DT = torch.float64


def rand(*shape: int, seed: int = 0, grad: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DT).requires_grad_(grad)


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt(sum(x * x for x in v))


def grads(loss: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, inputs)


def assert_same_values_and_grads(fast, naive, inputs, atol=1e-10) -> None:
    a = fast(*inputs)
    b = naive(*inputs)
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-9)
    for ga, gb in zip(grads(a, *inputs), grads(b, *inputs), strict=True):
        torch.testing.assert_close(ga, gb, atol=atol, rtol=1e-8)


# ----------------------------------------------------------------------------- NT-Xent


def naive_nt_xent(z1, z2, temperature):
    n = z1.shape[0]
    views = [unit(z1[i]) for i in range(n)] + [unit(z2[i]) for i in range(n)]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        numerator = torch.exp(torch.dot(views[i], views[j]) / temperature)
        denominator = sum(
            torch.exp(torch.dot(views[i], views[k]) / temperature) for k in range(2 * n) if k != i
        )
        total = total - torch.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_nt_xent_matches_loop(temperature):
    z1, z2 = rand(5, 4, seed=1), rand(5, 4, seed=2)
    assert_same_values_and_grads(
        lambda a, b: nt_xent(a, b, temperature),
        lambda a, b: naive_nt_xent(a, b, temperature),
        (z1, z2),
    )


def test_nt_xent_hand_computed():
    # Two images, views identical, orthogonal across images, T = 1: each anchor sees its
    # positive at similarity 1 and two negatives at 0 -> log(1 + 2/e); scale must not matter.
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    z = torch.tensor([e1, e2], dtype=DT)
    assert nt_xent(3 * z, z, temperature=1.0).item() == pytest.approx(math.log(1 + 2 / math.e))


def test_nt_xent_low_temperature_is_finite():
    z1, z2 = rand(8, 16, seed=3).float(), rand(8, 16, seed=4).float()
    loss = nt_xent(z1, z2, temperature=0.01)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(loss, (z1, z2)))


def test_nt_xent_collapse_is_worse():
    n, d = 6, 8
    constant = torch.ones(n, d, dtype=DT)
    spread = torch.eye(n, d, dtype=DT)
    collapsed = nt_xent(constant, constant)
    assert collapsed.item() == pytest.approx(math.log(2 * n - 1))
    assert nt_xent(spread, spread) < collapsed


# ----------------------------------------------------------------------------- InfoNCE


def naive_info_nce(q, k, queue, temperature):
    total = 0.0
    for i in range(q.shape[0]):
        qi, ki = unit(q[i]), unit(k[i])
        positive = torch.exp(torch.dot(qi, ki) / temperature)
        negatives = sum(torch.exp(torch.dot(qi, neg) / temperature) for neg in queue)
        total = total - torch.log(positive / (positive + negatives))
    return total / q.shape[0]


def test_info_nce_matches_loop():
    q, k = rand(4, 6, seed=5), rand(4, 6, seed=6)
    queue = F.normalize(rand(10, 6, seed=7, grad=False), dim=1)
    assert_same_values_and_grads(
        lambda a, b: info_nce(a, b, queue, 0.2),
        lambda a, b: naive_info_nce(a, b, queue, 0.2),
        (q, k),
    )


def test_info_nce_hand_computed():
    q = torch.tensor([[2.0, 0.0]], dtype=DT)
    k = torch.tensor([[1.0, 0.0]], dtype=DT)
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=DT)
    # logits [1, 0, -1] with T = 1
    expected = math.log(1 + math.exp(-1) + math.exp(-2))
    assert info_nce(q, k, queue, temperature=1.0).item() == pytest.approx(expected)


def test_info_nce_queue_gets_no_gradient():
    q, k = rand(3, 4, seed=8), rand(3, 4, seed=9)
    queue = F.normalize(rand(5, 4, seed=10, grad=False), dim=1).requires_grad_(True)
    info_nce(q, k, queue).backward()
    assert q.grad is not None and queue.grad is None


def test_info_nce_low_temperature_and_collapse():
    q, k = rand(4, 8, seed=11).float(), rand(4, 8, seed=12).float()
    queue = F.normalize(torch.randn(32, 8), dim=1)
    assert torch.isfinite(info_nce(q, k, queue, temperature=0.01))
    constant = torch.ones(4, 8, dtype=DT)
    queue_c = F.normalize(torch.ones(7, 8, dtype=DT), dim=1)
    collapsed = info_nce(constant, constant, queue_c)
    assert collapsed.item() == pytest.approx(math.log(8))
    spread = torch.eye(4, 8, dtype=DT)
    queue_s = torch.eye(8, dtype=DT)[4:]
    assert info_nce(spread, spread, queue_s) < collapsed


# ----------------------------------------------------------------------------- Barlow Twins


def naive_barlow_twins(z1, z2, lambd, eps=1e-5):
    n, d = z1.shape

    def standardise(z):
        columns = []
        for j in range(d):
            column = [z[i, j] for i in range(n)]
            mean = sum(column) / n
            var = sum((x - mean) ** 2 for x in column) / n
            columns.append([(x - mean) / torch.sqrt(var + eps) for x in column])
        return columns  # columns[j][i]

    a, b = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[i][s] * b[j][s] for s in range(n)) / n
            loss = loss + ((1 - c_ij) ** 2 if i == j else lambd * c_ij**2)
    return loss


def test_barlow_twins_matches_loop():
    z1, z2 = rand(6, 4, seed=13), rand(6, 4, seed=14)
    assert_same_values_and_grads(
        lambda a, b: barlow_twins(a, b, 0.05),
        lambda a, b: naive_barlow_twins(a, b, 0.05),
        (z1, z2),
    )


def test_barlow_twins_hand_computed():
    # Per dimension the batch is {+1, -1}: mean 0, biased var 1 -> z / sqrt(1 + eps); both
    # dimensions are equal, so C = [[1, 1], [1, 1]] / (1 + eps).
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=DT)
    c = 1 / (1 + 1e-5)
    expected = 2 * (1 - c) ** 2 + 0.0051 * 2 * c**2
    assert barlow_twins(z, z).item() == pytest.approx(expected, rel=1e-12)


def test_barlow_twins_collapse_is_worse():
    n, d = 8, 4
    constant = torch.ones(n, d, dtype=DT)
    # constant embeddings standardise to 0: C = 0, loss = d
    assert barlow_twins(constant, constant).item() == pytest.approx(d)
    signs = torch.tensor([[(i >> j) & 1 for j in range(d)] for i in range(n)], dtype=DT)
    spread = 2 * signs - 1  # decorrelated +-1 columns
    assert barlow_twins(spread, spread) < d


# ----------------------------------------------------------------------------- Sinkhorn


def naive_sinkhorn(scores, epsilon, iterations):
    b, k = scores.shape
    q = [[math.exp(scores[i, j].item() / epsilon) for i in range(b)] for j in range(k)]  # K x B
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        for j in range(k):
            row_sum = sum(q[j])
            q[j] = [x / row_sum / k for x in q[j]]
        for i in range(b):
            col_sum = sum(q[j][i] for j in range(k))
            for j in range(k):
                q[j][i] = q[j][i] / col_sum / b
    return torch.tensor([[q[j][i] * b for j in range(k)] for i in range(b)], dtype=DT)


def naive_sinkhorn_logspace(scores, epsilon, iterations):
    # Same loop in log space (plain float64 exp underflows at these ranges).
    b, k = scores.shape
    log_q = [[scores[i, j].item() / epsilon for j in range(k)] for i in range(b)]

    def lse(values):
        top = max(values)
        return top + math.log(sum(math.exp(v - top) for v in values))

    for _ in range(iterations):
        for j in range(k):
            row = lse([log_q[i][j] for i in range(b)])
            for i in range(b):
                log_q[i][j] -= row + math.log(k)
        for i in range(b):
            col = lse(log_q[i])
            log_q[i] = [v - col - math.log(b) for v in log_q[i]]
    return torch.tensor([[math.exp(v + math.log(b)) for v in row] for row in log_q], dtype=DT)


def test_sinkhorn_matches_loop():
    scores = rand(7, 5, seed=15, grad=False) * 0.3
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.1, 3), naive_sinkhorn(scores, 0.1, 3))


def test_sinkhorn_marginals():
    b, k = 24, 6
    scores = (
        F.normalize(rand(b, 8, seed=16, grad=False), dim=1)
        @ F.normalize(rand(k, 8, seed=17, grad=False), dim=1).T
    )
    codes = sinkhorn_knopp(scores.float(), epsilon=0.05, iterations=3)
    assert codes.dtype == torch.float32
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(b), atol=1e-6, rtol=0)
    converged = sinkhorn_knopp(scores, epsilon=0.05, iterations=500)
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(b, dtype=DT), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        converged.sum(dim=0), torch.full((k,), b / k, dtype=DT), atol=1e-4, rtol=0
    )


def test_sinkhorn_hand_computed():
    # eps = 1, scores [[ln 3, 0], [0, ln 3]]: exp gives [[3, 1], [1, 3]], already balanced.
    scores = torch.tensor([[math.log(3), 0.0], [0.0, math.log(3)]], dtype=DT)
    expected = torch.tensor([[0.75, 0.25], [0.25, 0.75]], dtype=DT)
    torch.testing.assert_close(sinkhorn_knopp(scores, epsilon=1.0), expected)


def test_sinkhorn_is_shift_invariant_and_stable_in_half():
    scores = rand(6, 4, seed=18, grad=False)
    torch.testing.assert_close(sinkhorn_knopp(scores), sinkhorn_knopp(scores + 40.0))
    # 40 / 0.05 = 800: exp overflows without the max shift, even in float32.
    codes = sinkhorn_knopp((scores + 40.0).half(), epsilon=0.05)
    assert torch.isfinite(codes).all()
    # Range 7.7 / eps 0.01 = 770 > 87: a single global-max shift underflows whole samples to 0
    # in float32 (then 0/0); the log-domain iterations must still give row-stochastic codes.
    codes = sinkhorn_knopp(scores.float(), epsilon=0.01)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(codes, naive_sinkhorn_logspace(scores, 0.01, 3).float())


def test_sinkhorn_constant_features_give_uniform_codes():
    constant = torch.zeros(8, 4, dtype=DT)
    torch.testing.assert_close(sinkhorn_knopp(constant), torch.full((8, 4), 0.25, dtype=DT))
    distinct = torch.eye(8, 4, dtype=DT) + torch.eye(8, 4, dtype=DT).roll(4, dims=0)
    codes = sinkhorn_knopp(distinct)
    assert (codes.max(dim=1).values > 0.9).all()


# ----------------------------------------------------------------------------- SwAV


def naive_swav(scores, codes, temperature):
    n_crops, b = len(scores), scores[0].shape[0]
    loss = 0.0
    for i, q in enumerate(codes):
        sub = 0.0
        for j in range(n_crops):
            if j == i:
                continue
            for s in range(b):
                row = scores[j][s] / temperature
                log_z = torch.log(sum(torch.exp(x) for x in row))
                sub = sub - sum(q[s, c] * (row[c] - log_z) for c in range(len(row))) / b
        loss = loss + sub / (n_crops - 1)
    return loss / len(codes)


def test_swav_matches_loop():
    scores = [rand(4, 5, seed=s) for s in (20, 21, 22, 23)]  # 2 large + 2 small crops
    codes = [sinkhorn_knopp(s.detach()) for s in scores[:2]]
    assert_same_values_and_grads(
        lambda *s: swav_loss(list(s), codes, 0.1),
        lambda *s: naive_swav(list(s), codes, 0.1),
        tuple(scores),
    )


def test_swav_hand_computed():
    t = 0.1
    scores = [torch.zeros(1, 2, dtype=DT), torch.tensor([[math.log(3) * t, 0.0]], dtype=DT)]
    codes = [torch.tensor([[0.5, 0.5]], dtype=DT)]
    # log_softmax([ln 3, 0]) = [ln 3/4, ln 1/4]
    expected = -0.5 * (math.log(0.75) + math.log(0.25))
    assert swav_loss(scores, codes, temperature=t).item() == pytest.approx(expected)


def test_swav_low_temperature_and_collapse():
    scores = [rand(4, 6, seed=s).float() for s in (24, 25, 26)]
    codes = [sinkhorn_knopp(scores[0].detach())]
    assert torch.isfinite(swav_loss(scores, codes, temperature=0.01))
    b, k = 6, 3
    constant = [torch.zeros(b, k, dtype=DT)] * 2
    collapsed = swav_loss(constant, [sinkhorn_knopp(c) for c in constant])
    assert collapsed.item() == pytest.approx(math.log(k))
    distinct = torch.eye(k, dtype=DT).repeat(2, 1)  # cosine scores of samples on prototypes
    views = [distinct, distinct]
    assert swav_loss(views, [sinkhorn_knopp(v) for v in views]) < collapsed


# ----------------------------------------------------------------------------- PIRL


def naive_pirl(f, g, m_pos, m_neg, temperature, dataset_size, lambda_=0.5):
    n = f.shape[0]

    def h(u, v, n_neg):
        e = torch.exp(torch.dot(unit(u), unit(v)) / temperature)
        return e / (e + n_neg / dataset_size)

    def l_nce(v):
        total = 0.0
        for i in range(n):
            negatives = m_neg[i] if m_neg.dim() == 3 else m_neg
            total = total - torch.log(h(m_pos[i], v[i], len(negatives)))
            for neg in negatives:
                total = total - torch.log(1 - h(v[i], neg, len(negatives)))
        return total / n

    return lambda_ * l_nce(g) + (1 - lambda_) * l_nce(f)


def naive_pirl_infonce(f, g, m_pos, m_neg, temperature, lambda_=0.5):
    def l_infonce(v):
        total = 0.0
        for i in range(v.shape[0]):
            negatives = m_neg[i] if m_neg.dim() == 3 else m_neg
            pos = torch.exp(torch.dot(unit(m_pos[i]), unit(v[i])) / temperature)
            neg = sum(torch.exp(torch.dot(unit(v[i]), unit(x)) / temperature) for x in negatives)
            total = total - torch.log(pos / (pos + neg))
        return total / v.shape[0]

    return lambda_ * l_infonce(g) + (1 - lambda_) * l_infonce(f)


@pytest.mark.parametrize("shared", [False, True])
def test_pirl_nce_matches_loop(shared):
    f, g = rand(3, 5, seed=30), rand(3, 5, seed=31)
    m_pos = F.normalize(rand(3, 5, seed=32, grad=False), dim=1)
    m_neg = F.normalize(rand(*((4, 5) if shared else (3, 4, 5)), seed=33, grad=False), dim=-1)
    assert_same_values_and_grads(
        lambda a, b: pirl_nce(a, b, m_pos, m_neg, 0.5, dataset_size=50),
        lambda a, b: naive_pirl(a, b, m_pos, m_neg, 0.5, 50),
        (f, g),
    )
    assert_same_values_and_grads(
        lambda a, b: pirl_nce(a, b, m_pos, m_neg, 0.5, variant="infonce"),
        lambda a, b: naive_pirl_infonce(a, b, m_pos, m_neg, 0.5),
        (f, g),
    )


def test_pirl_nce_hand_computed():
    # s(m, v) = 1, s(v, m') = 0, tau = 1, |D_N| / |D| = 1/2:
    # h_pos = e / (e + 1/2), h_neg = 1 / (1 + 1/2) = 2/3 -> -log h_pos - log(1/3) per term.
    v = torch.tensor([[1.0, 0.0]], dtype=DT)
    neg = torch.tensor([[0.0, 1.0]], dtype=DT)
    expected = -math.log(math.e / (math.e + 0.5)) + math.log(3)
    loss = pirl_nce(v, v, v, neg, temperature=1.0, dataset_size=2)
    assert loss.item() == pytest.approx(expected)
    # log Z shifts every score: exp(s)/Z with Z = e^1 -> h_pos = 1 / (1 + 1/2)
    loss_z = pirl_nce(v, v, v, neg, temperature=1.0, dataset_size=2, log_norm_constant=1.0)
    h_neg = math.exp(-1) / (math.exp(-1) + 0.5)
    assert loss_z.item() == pytest.approx(-math.log(2 / 3) - math.log(1 - h_neg))


def test_pirl_nce_lambda_weights_the_two_terms():
    f, g = rand(2, 3, seed=34), rand(2, 3, seed=35)
    m_pos = F.normalize(rand(2, 3, seed=36, grad=False), dim=1)
    m_neg = F.normalize(rand(5, 3, seed=37, grad=False), dim=1)
    only_jigsaw = pirl_nce(f, g, m_pos, m_neg, dataset_size=9, lambda_=1.0)
    only_image = pirl_nce(f, g, m_pos, m_neg, dataset_size=9, lambda_=0.0)
    mixed = pirl_nce(f, g, m_pos, m_neg, dataset_size=9, lambda_=0.5)
    torch.testing.assert_close(mixed, 0.5 * only_jigsaw + 0.5 * only_image)
    torch.testing.assert_close(only_jigsaw, naive_pirl(g, g, m_pos, m_neg, 0.07, 9))


def test_pirl_nce_low_temperature_collapse_and_errors():
    f, g = rand(4, 8, seed=38).float(), rand(4, 8, seed=39).float()
    m_neg = F.normalize(torch.randn(4, 16, 8), dim=-1)
    for variant in ("nce", "infonce"):
        loss = pirl_nce(f, g, f.detach(), m_neg, 0.01, dataset_size=100, variant=variant)
        assert torch.isfinite(loss)
    constant = torch.ones(4, 8, dtype=DT)
    bank = torch.ones(4, 3, 8, dtype=DT)
    spread = torch.eye(4, 8, dtype=DT)
    spread_neg = torch.stack([torch.eye(8, dtype=DT)[4:7]] * 4)
    for variant in ("nce", "infonce"):
        collapsed = pirl_nce(constant, constant, constant, bank, dataset_size=10, variant=variant)
        apart = pirl_nce(spread, spread, spread, spread_neg, dataset_size=10, variant=variant)
        assert apart < collapsed
    with pytest.raises(ValueError, match="dataset_size"):
        pirl_nce(f, g, f, m_neg)


# ----------------------------------------------------------------------------- pretext


def test_pretext_cross_entropy_hand_computed_and_loop():
    logits = torch.tensor([[0.0, math.log(3)]], dtype=DT)
    assert pretext_cross_entropy(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75))
    x = rand(5, 4, seed=40)
    labels = torch.tensor([0, 3, 1, 2, 3])

    def naive(z):
        return -sum(z[i, labels[i]] - torch.log(torch.exp(z[i]).sum()) for i in range(5)) / 5

    assert_same_values_and_grads(lambda z: pretext_cross_entropy(z, labels), naive, (x,))
    with pytest.raises(ValueError):
        pretext_cross_entropy(x, labels[:3])
