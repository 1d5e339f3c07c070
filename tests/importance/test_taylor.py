"""The Taylor family: batch invariance, agreement with brute force, hand-computed cases, ranking quality."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sharkrec.data.dataset import EncodedSplit, SparseColumn
from sharkrec.importance import DEFAULT_METHOD, field_importance, taylor_family
from sharkrec.importance.base import block_size
from sharkrec.importance.taylor import VARIANTS, taylor_terms

SCALAR_TERMS = dict(
    logits=torch.tensor([[0.0]]),
    labels=torch.tensor([[1.0]]),
    vectors=torch.tensor([[[0.0, 0.0]]]),  # (B=1, F=1, D=2)
    jacobians=torch.tensor([[[[1.0, 2.0]]]]),  # (B, F, T=1, D)
    mean=torch.tensor([[1.0, 0.0]], dtype=torch.float64),
    covariance=torch.tensor([[[1.0, 0.0], [0.0, 0.5]]], dtype=torch.float64),
    references=torch.tensor([[[1.0, 0.0]], [[-1.0, 0.0]]], dtype=torch.float64),  # (K=2, F, D)
    task_weights=torch.tensor([1.0]),
)


def test_hand_computed_single_sample() -> None:
    """z = 0, y = 1, p = 1/2, J = (1, 2), v = 0, E = (1, 0), Σ = diag(1, 1/2), references ±(1, 0)."""
    terms = taylor_terms(**SCALAR_TERMS)  # type: ignore[arg-type]
    first = (0.5 - 1.0) * 1.0  # (p − y) · J·(E − v)
    second = 0.5 * 0.25 * (1.0**2 + (1.0 * 1.0 + 2.0 * 0.5 * 2.0))  # ½ p(1−p) ((J·δ)² + JᵀΣJ)
    assert float(terms["taylor"]) == pytest.approx(first)
    assert float(terms["taylor-abs"]) == pytest.approx(abs(first))
    assert float(terms["taylor2"]) == pytest.approx(first + second)
    # z' = 0 + J·(r − v) = ±1; exact BCE averaged over the two references, minus BCE(z=0)
    logit = 0.5 * (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) - math.log(2.0)
    assert float(terms["taylor-logit"]) == pytest.approx(logit)


def test_hand_computed_two_tasks_are_weighted() -> None:
    """Two tasks with weights (1, 3): each term is the weighted sum of the one-task terms."""
    one = taylor_terms(**SCALAR_TERMS)  # type: ignore[arg-type]
    other = dict(SCALAR_TERMS, labels=torch.tensor([[0.0]]), jacobians=torch.tensor([[[[0.5, -1.0]]]]))
    two = taylor_terms(**dict(
        SCALAR_TERMS, logits=torch.tensor([[0.0, 0.0]]), labels=torch.tensor([[1.0, 0.0]]),
        jacobians=torch.tensor([[[[1.0, 2.0], [0.5, -1.0]]]]), task_weights=torch.tensor([1.0, 3.0])))  # type: ignore[arg-type]
    single_other = taylor_terms(**other)  # type: ignore[arg-type]
    for name in ("taylor", "taylor2", "taylor-logit"):
        assert float(two[name]) == pytest.approx(float(one[name]) + 3 * float(single_other[name]))


def test_signed_taylor_equals_brute_force(toy_two_task) -> None:
    """Eq. 4 averaged over samples, each sample's gradient taken alone with autograd."""
    model, data = toy_two_task
    split = data.test.subset(np.arange(40))
    result = field_importance(model, split, "taylor", batch_size=16)
    with torch.no_grad():
        mean = model.field_vectors(split.slice(0, len(split))).double().mean(0)  # (F, D)
    total = torch.zeros(model.num_fields, dtype=torch.float64)
    for n in range(len(split)):
        sample = split.slice(n, n + 1)
        vectors = model.field_vectors(sample).detach().requires_grad_(True)
        loss = F.binary_cross_entropy_with_logits(model.logits_from_fields(vectors), sample.labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, vectors)
        total += (grad[0].double() * (mean - vectors[0].detach().double())).sum(-1)
    np.testing.assert_allclose(result.scores, (total / len(split)).numpy(), rtol=1e-5, atol=1e-9)


def test_batch_size_changes_nothing(toy_two_task) -> None:
    model, data = toy_two_task
    small = taylor_family(model, data.test, batch_size=64, draws=16)
    large = taylor_family(model, data.test, batch_size=4096, draws=16)
    for name in VARIANTS:
        np.testing.assert_allclose(small[name].scores, large[name].scores, rtol=1e-4, atol=1e-10, err_msg=name)
        block = block_size(len(data.test), 64)
        assert small[name].raw.shape == (-(-len(data.test) // block), model.num_fields)
        assert small[name].samples == len(data.test)


def test_family_matches_single_methods(toy_two_task) -> None:
    model, data = toy_two_task
    family = taylor_family(model, data.test, draws=8, seed=3)
    for name in VARIANTS:
        alone = field_importance(model, data.test, name, draws=8, seed=3)
        np.testing.assert_allclose(alone.scores, family[name].scores, rtol=1e-6, atol=1e-12)
        assert alone.method == name


def test_constant_field_scores_zero(toy_two_task) -> None:
    """A field whose vector is the same for every sample cannot change the loss: every estimate is 0."""
    model, data = toy_two_task
    split = data.test
    columns = [split.column(i) for i in range(split.num_sparse)]
    columns[1] = SparseColumn(np.full(len(split), 3, dtype=np.int64))  # field "b"
    constant = EncodedSplit(split.dense.numpy(), columns, split.labels.numpy())
    family = taylor_family(model, constant, draws=8)
    index = model.field_names.index("b")
    for name in VARIANTS:
        assert abs(family[name].scores[index]) < 1e-6, name  # taylor-logit's K losses are float32
    exact = field_importance(model, constant, "exact", draws=4)
    assert abs(exact.scores[index]) < 1e-9


def test_default_ranks_noise_below_strong(synthetic_trained) -> None:
    model, synthetic = synthetic_trained
    result = field_importance(model, synthetic.data.test)
    assert result.method == DEFAULT_METHOD
    roles = {f.name: f.role.value for f in synthetic.ground_truth.fields}
    strong = [result.score(n) for n, r in roles.items() if r == "strong"]
    noise = [result.score(n) for n, r in roles.items() if r == "noise"]
    assert max(noise) < min(strong), result.as_dict()
