"""Frequency-weighted k-means on embedding rows, and Saec's fast head / tail variant.

Points are the trained rows of one field, ``points`` (N, D), each with a weight ``weights`` (N,):
how often the value occurs in the training split. Full k-means minimises the weighted
within-cluster error over all N rows::

    error = Σ_n w_n · ‖x_n − row[c(n)]‖²                       (weighted SSE)

The fast variant (Saec's frequency-based clustering) runs the same Lloyd iterations only on the
*head*: the hottest values that together cover ``head_share`` of all occurrences, then assigns every
tail value to its nearest head centroid in one pass. Heavy-tailed (Zipf) fields put most of the
weight on few values, so the head is small and the tail barely moves the weighted error. Two more
savings on the head: Lloyd runs on a threshold sample of it (every hot value kept, the lighter ones
sampled ∝ weight and re-weighted, so the weighted sums stay unbiased), started from greedy k-means++;
the head values left out of the sample are assigned with the tail. Full k-means keeps the textbook
recipe (one k-means++ draw per centroid, Lloyd on every value): it is the baseline.

Cost, one thread, on N values, K clusters, D dimensions: every assignment pass computes N·K scores of D
multiply-adds, in a fused C++ kernel (``csrc/nearest.cpp``: a few points against a block of centroids in
registers, only the running minimum kept) or, without a compiler, as a blocked (N, D) × (D, K) GEMM plus a
two-level row argmin (see :func:`nearest_centroid`); k-means++ is K passes over the N points. Full
k-means pays K seeding passes and one assignment pass per Lloyd iteration over all N; the fast path
pays one assignment pass over all N and the rest on about 8·K points.

``metric`` is ``euclidean`` (squared L2) or ``cosine`` (spherical k-means on unit vectors). Either
way the row a cluster finally stores is the weighted mean of its members' raw vectors, the row that
minimises the weighted SSE above for the assignment found.
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sharkrec.errors import ConfigError
from sharkrec.extensions import build, disabled

_CHUNK = 65_536  # points per block in the error sums
_SUM_CHUNK = 16_384  # points per block in the cluster sums
_HEAD_SAMPLE_PER_CLUSTER = 8  # the fast path's Lloyd sees about this many head points per cluster
_ARGMIN_CHUNK = 512  # points per distance block: (512, K) floats stay in cache, which an argmin pass needs
_GROUP = 64  # columns per group in the two-level argmin
_SOURCE = Path(__file__).with_name("csrc") / "nearest.cpp"


@functools.lru_cache(maxsize=1)
def _build() -> Any | None:
    return build("sharkrec_cluster_nearest", _SOURCE) if _SOURCE.is_file() else None


def extension() -> Any | None:
    """The compiled nearest-centroid kernel, or ``None`` (no compiler, build failed, SHARKREC_NO_EXTENSION=1)."""
    return None if disabled() else _build()


class Metric(str, enum.Enum):
    """Distance between embedding rows used to form clusters."""

    EUCLIDEAN = "euclidean"
    COSINE = "cosine"


@dataclass(frozen=True)
class KMeansResult:
    """Cluster of every point (N,) int64, the stored rows (K, D) and how the fit went.

    ``centroids`` (K, D) are the head's final centroids in metric space (unit rows for cosine): the
    points the tail was assigned to. ``rows`` are the weighted means of all members' raw vectors.
    """

    assignment: Tensor
    rows: Tensor
    centroids: Tensor
    iterations: int
    head_size: int
    sample_size: int = 0  # points Lloyd ran on: all of them for full k-means, the head's sample for the fast path


def _prepare(points: Tensor, metric: Metric) -> Tensor:
    points = points.detach().to(torch.float32)
    if metric is Metric.COSINE:
        return torch.nn.functional.normalize(points, dim=1)
    return points


def nearest_centroid(points: Tensor, centroids: Tensor, metric: Metric = Metric.EUCLIDEAN, *,
                     use_extension: bool = True) -> Tensor:
    """Index (N,) of the closest of ``centroids`` (K, D) for every row of ``points`` (N, D).

    ``points`` and ``centroids`` must already be in the metric's space (unit rows for cosine). Ties go to
    the lowest centroid index. float32 CPU inputs go to the fused kernel when it is built; otherwise (or
    with ``use_extension=False``) a blocked GEMM + argmin computes the same scores. The two sum the D
    products in different orders, so a point whose two nearest centroids lie within float rounding of
    each other may get either; every other point gets the same answer.
    """
    module = extension() if use_extension else None
    if module is not None and points.dtype == centroids.dtype == torch.float32 \
            and points.device.type == centroids.device.type == "cpu" and 1 <= centroids.shape[0] < 2**31:
        return module.nearest_centroid(points, centroids, metric is Metric.COSINE)
    out = torch.empty(points.shape[0], dtype=torch.int64)
    if metric is Metric.COSINE:  # largest score = smallest negated score
        bias, alpha = torch.zeros(centroids.shape[0], dtype=centroids.dtype), -1.0
    else:  # ‖x‖² is the same for every centroid, so it is left out of the argmin
        bias, alpha = (centroids * centroids).sum(1), -2.0  # (K,)
    for start in range(0, points.shape[0], _ARGMIN_CHUNK):
        block = points[start:start + _ARGMIN_CHUNK]  # (C, D)
        distances = torch.addmm(bias.unsqueeze(0), block, centroids.T, alpha=alpha)  # (C, K)
        out[start:start + _ARGMIN_CHUNK] = _argmin_rows(distances)
    return out


def _argmin_rows(distances: Tensor) -> Tensor:
    """``distances.argmin(1)`` (lowest index on ties) in two levels: the minimum of every group of
    ``_GROUP`` columns (a vectorised ``amin``), the first group holding the row minimum, then the first
    column of that group holding it. Same answer, several times faster than one long ``argmin``."""
    rows, k = distances.shape
    if k < 4 * _GROUP:
        return distances.argmin(1)
    if k % _GROUP:  # pad with +inf columns, which never win
        distances = torch.nn.functional.pad(distances, (0, _GROUP - k % _GROUP), value=float("inf"))
    grouped = distances.view(rows, -1, _GROUP)  # (C, G, _GROUP)
    group = grouped.amin(2).argmin(1)  # (C,) first group reaching the row minimum
    within = grouped[torch.arange(rows), group].argmin(1)  # (C,) first column in it
    return group * _GROUP + within


def cluster_sums(points: Tensor, weights: Tensor, assignment: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(K, D) float64 Σ w·x and (K,) Σ w over the members of each cluster.

    float64 ``index_add_`` over blocks of ``_SUM_CHUNK`` points: each block's float64 copy stays in
    cache (one (N, D) float64 copy of a million points costs five times the sums themselves).
    """
    weights = weights.to(torch.float64)
    sums = torch.zeros(k, points.shape[1], dtype=torch.float64)
    for start in range(0, points.shape[0], _SUM_CHUNK):
        block = points[start:start + _SUM_CHUNK].to(torch.float64, copy=True)  # (C, D)
        sums.index_add_(0, assignment[start:start + _SUM_CHUNK], block.mul_(weights[start:start + _SUM_CHUNK, None]))
    mass = torch.zeros(k, dtype=torch.float64).index_add_(0, assignment, weights)
    return sums, mass


def weighted_means(points: Tensor, weights: Tensor, assignment: Tensor, k: int,
                   fallback: Tensor | None = None) -> Tensor:
    """(K, D) weighted mean of the points of each cluster; an empty (or zero-weight) cluster keeps
    its ``fallback`` row (zeros when none is given)."""
    sums, mass = cluster_sums(points, weights, assignment, k)
    means = (sums / mass.clamp_min(1e-300).unsqueeze(1)).to(torch.float32)
    empty = mass <= 0
    if bool(empty.any()):
        means[empty] = fallback[empty] if fallback is not None else 0.0
    return means


def weighted_error(points: Tensor, weights: Tensor, assignment: Tensor, rows: Tensor) -> float:
    """Σ_n w_n · ‖x_n − rows[assignment_n]‖², the frequency-weighted within-cluster error."""
    total = 0.0
    for start in range(0, points.shape[0], _CHUNK):
        diff = points[start:start + _CHUNK].float() - rows[assignment[start:start + _CHUNK]]
        total += float(((diff * diff).sum(1).double() * weights[start:start + _CHUNK].double()).sum())
    return total


def _initial_centroids(points: Tensor, weights: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Weighted k-means++ seeding: each next centroid is a point drawn ∝ weight × squared distance to
    the nearest centroid so far (uniform weights where fewer than k points have weight).

    A draw is one uniform number against the running sum of the (N,) float64 draw weights (inverse
    CDF), a single pass where ``torch.multinomial`` takes several times longer on a million points.
    """
    mass = weights.to(torch.float64).clamp_min(0)
    if int((mass > 0).sum()) < k:
        mass = mass + 1.0
    mass_cumulative = mass.cumsum(0)
    centroids = torch.empty(k, points.shape[1], dtype=points.dtype)
    point_sq = (points * points).sum(1)  # (N,)
    closest = torch.full_like(point_sq, float("inf"))
    cumulative = mass_cumulative
    for i in range(k):
        if i > 0:
            cumulative = (mass * closest).cumsum(0)
            if not float(cumulative[-1]) > 0:  # every weighted point already is a centroid
                cumulative = mass_cumulative
        drawn = _draw(cumulative, generator)
        centroids[i] = points[drawn]
        centre = centroids[i]
        distance = torch.addmv(point_sq + centre.dot(centre), points, centre, alpha=-2.0).clamp_min_(0)  # (N,)
        torch.minimum(closest, distance, out=closest)
    return centroids


def _draw(cumulative: Tensor, generator: torch.Generator) -> int:
    """Index i drawn with probability ∝ cumulative[i] − cumulative[i − 1] (a running sum, last > 0)."""
    threshold = torch.rand(1, dtype=torch.float64, generator=generator) * cumulative[-1]
    return min(int(torch.searchsorted(cumulative, threshold, right=True)), cumulative.shape[0] - 1)


def _greedy_initial_centroids(points: Tensor, weights: Tensor, k: int, generator: torch.Generator,
                              trials: int | None = None, *, use_extension: bool = True) -> Tensor:
    """Greedy weighted k-means++ (Arthur & Vassilvitskii 2007, §6): each step draws ``trials`` candidates
    ∝ weight × squared distance to the nearest centroid so far and keeps the one that lowers the
    weighted potential Σ w·min_c ‖x − c‖² the most. Better starts than one draw per step, for about
    ``trials`` times the (small) cost; ``2 + ⌊ln k⌋`` trials by default. The C++ kernel (``greedy_seeds``)
    runs the same steps on float32 CPU points, all candidates of a step scored in one pass over the points;
    its float32 potentials are summed in another order, so a near-tie between candidates may go either way."""
    trials = trials or 2 + int(math.log(k))
    mass = weights.to(torch.float64).clamp_min(0)
    if int((mass > 0).sum()) < k:
        mass = mass + 1.0
    n = points.shape[0]
    mass32, mass_cumulative = mass.to(points.dtype), mass.cumsum(0)
    uniforms = torch.rand(k, trials, dtype=torch.float64, generator=generator)  # (K, T), drawn up front
    module = extension() if use_extension else None
    if module is not None and points.dtype == torch.float32 and points.device.type == "cpu":
        return points[module.greedy_seeds(points, mass, uniforms)]  # the same steps, one pass per step over the points
    centroids = torch.empty(k, points.shape[1], dtype=points.dtype)
    point_sq = (points * points).sum(1)  # (N,)
    first = min(int(torch.searchsorted(mass_cumulative, uniforms[0, :1] * mass_cumulative[-1], right=True)), n - 1)
    centroids[0] = points[first]
    closest = torch.addmv(point_sq + point_sq[first], points, centroids[0], alpha=-2.0).clamp_min_(0)  # (N,)
    for i in range(1, k):
        cumulative = (mass * closest).cumsum(0)
        total = float(cumulative[-1])
        if not total > 0:  # every weighted point already is a centroid
            cumulative, total = mass_cumulative, float(mass_cumulative[-1])
        drawn = torch.searchsorted(cumulative, uniforms[i] * total, right=True).clamp_max_(n - 1)  # (T,)
        candidates = points[drawn]  # (T, D)
        reached = torch.addmm(point_sq, candidates, points.T, alpha=-2.0)  # (T, N) ‖x‖² − 2 x·c
        reached.add_(point_sq[drawn].unsqueeze(1)).clamp_min_(0)
        torch.minimum(reached, closest, out=reached)
        best = int((reached @ mass32).argmin())  # the first candidate of the lowest potential
        centroids[i] = candidates[best]
        closest = reached[best]
    return centroids


def threshold_sample(weights: Tensor, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Weighted sample of about ``size`` of the points with ``weights`` (N,), unbiased for weighted sums.

    Threshold sampling: a point of weight w ≥ τ is always kept with its weight; a lighter one is kept
    with probability w / τ and then weighs τ, so Σ over the sample of weight × f(x) has the expectation
    Σ_n w_n f(x_n) for every f. τ is set so that the expected sample size is ``size``. Returns the
    kept indices (ascending) and their weights; every point, with its own weight, when N ≤ size.
    """
    weights = weights.to(torch.float64)
    n = weights.shape[0]
    if n <= size:
        return torch.arange(n), weights
    low, high = 0.0, float(weights.max())
    for _ in range(60):  # bisect τ: the expected size Σ min(1, w / τ) falls as τ grows
        tau = 0.5 * (low + high)
        expected = float((weights / tau).clamp_max(1.0).sum())
        low, high = (tau, high) if expected > size else (low, tau)
    tau = high
    keep = torch.rand(n, dtype=torch.float64, generator=generator) * tau < weights
    chosen = keep.nonzero().squeeze(1)
    return chosen, weights[chosen].clamp_min(tau)


def lloyd(points: Tensor, weights: Tensor, k: int, *, metric: Metric = Metric.EUCLIDEAN, max_iter: int = 25,
          tol: float = 1e-4, seed: int = 0, initial: Tensor | None = None) -> tuple[Tensor, Tensor, int]:
    """Weighted Lloyd iterations on ``points`` (N, D) already in metric space.

    Starts from ``initial`` (K, D) centroids, else from weighted k-means++ seeded with ``seed``.
    Returns the centroids (K, D), the assignment (N,) and the iterations run. Stops when the weighted
    error improves by less than ``tol`` (relative) or after ``max_iter`` iterations.
    """
    if initial is None:
        centroids = _initial_centroids(points, weights, k, torch.Generator().manual_seed(int(seed)))
    else:
        centroids = initial
    previous = float("inf")
    iterations = 0
    assignment = nearest_centroid(points, centroids, metric)
    while iterations < max_iter:
        iterations += 1
        centroids = weighted_means(points, weights, assignment, k, fallback=centroids)
        if metric is Metric.COSINE:
            centroids = torch.nn.functional.normalize(centroids, dim=1)
        assignment = nearest_centroid(points, centroids, metric)
        error = weighted_error(points, weights, assignment, centroids)
        if error == 0.0 or (previous < float("inf") and previous - error <= tol * previous):
            break
        previous = error
    return centroids, assignment, iterations


def head_size(weights: Tensor, head_share: float, k: int) -> int:
    """Values in the head: the fewest hottest values covering ``head_share`` of the weight, at least k."""
    _check_share(head_share)
    if head_share >= 1.0:
        return weights.shape[0]
    return _covering(weights.to(torch.float64).sort(descending=True, stable=True).values, head_share, k)


def _check_share(head_share: float) -> None:
    if not 0.0 < head_share <= 1.0:
        raise ConfigError(f"head_share is {head_share}; use a share of occurrences in (0, 1], e.g. 0.9")


def _covering(ordered: Tensor, head_share: float, k: int) -> int:
    """:func:`head_size` for weights (N,) float64 already sorted hottest first."""
    n = ordered.shape[0]
    total = float(ordered.sum())
    if total <= 0:
        return max(k, 1)
    covered = torch.searchsorted(ordered.cumsum(0), torch.tensor([head_share * total], dtype=torch.float64))
    return min(n, max(k, int(covered.item()) + 1))


def kmeans(points: Tensor, weights: Tensor, k: int, *, head_share: float = 1.0,
           metric: Metric | str = Metric.EUCLIDEAN, max_iter: int = 25, tol: float = 1e-4,
           seed: int = 0) -> KMeansResult:
    """Cluster ``points`` (N, D) with ``weights`` (N,) into ``k`` clusters.

    ``head_share = 1`` is full weighted k-means on every point: weighted k-means++, then Lloyd.
    ``head_share < 1`` is Saec's fast clustering: Lloyd on the head only, then one nearest-centroid
    pass for everything else. The head's Lloyd runs on a threshold sample of it (about
    ``_HEAD_SAMPLE_PER_CLUSTER`` · k points, unbiased for the weighted sums Lloyd takes; the hot values
    all kept) from greedy k-means++; the head values left out of the sample join the tail pass.
    Deterministic for a seed: the head order is a stable sort by weight (ties by index).
    """
    metric = Metric(metric)
    n = int(points.shape[0])
    if not 1 <= k <= n:
        raise ConfigError(f"cannot make {k} clusters of {n} values; use 1..{n} clusters")
    weights = weights.to(torch.float64)
    space = _prepare(points, metric)
    _check_share(head_share)
    if head_share >= 1.0:
        size = sample_size = n
        centroids, assignment, iterations = lloyd(space, weights, k, metric=metric, max_iter=max_iter, tol=tol,
                                                  seed=seed)
    else:
        ordered, order = weights.sort(descending=True, stable=True)
        size = _covering(ordered, head_share, k)
        generator = torch.Generator().manual_seed(int(seed))
        chosen, sample_weights = threshold_sample(ordered[:size], _HEAD_SAMPLE_PER_CLUSTER * k, generator)
        sample = space[order[chosen]]
        sample_size = int(chosen.numel())
        initial = _greedy_initial_centroids(sample, sample_weights, k, generator)
        centroids, _, iterations = lloyd(sample, sample_weights, k, metric=metric, max_iter=max_iter, tol=tol,
                                         initial=initial)
        # the one pass over all values: the tail, the head values left out of the sample, and the sample
        # itself (which Lloyd's last step already put at its nearest centroid: the same answer again)
        assignment = nearest_centroid(space, centroids, metric)
    raw = points.detach().to(torch.float32)
    # the stored row of a cluster: weighted mean of its members' raw vectors (plain mean when they
    # all have weight 0; zeros for a cluster nobody joined)
    sums, mass = cluster_sums(raw, weights, assignment, k)
    rows = (sums / mass.clamp_min(1e-300).unsqueeze(1)).to(torch.float32)
    if bool((mass <= 0).any()):
        fallback = weighted_means(raw, torch.ones(n, dtype=torch.float64), assignment, k)
        rows[mass <= 0] = fallback[mass <= 0]
    return KMeansResult(assignment=assignment, rows=rows, centroids=centroids, iterations=iterations, head_size=size,
                        sample_size=sample_size)
