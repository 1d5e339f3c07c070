"""Weighted k-means and the fast head / tail variant: recovery, determinism, tail assignment, error."""

from __future__ import annotations

import pytest
import torch

from sharkrec.cluster.kmeans import Metric, head_size, kmeans, nearest_centroid, weighted_error
from sharkrec.errors import ConfigError


def blobs(values: int = 3000, centres: int = 8, noise: float = 0.05, exponent: float = 1.2, seed: int = 0
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows (V, 4) around ``centres`` well-separated centres, Zipf weights (V,) and the true owner (V,)."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(centres, 4, generator=g) * 5
    owner = torch.randint(0, centres, (values,), generator=g)
    rows = centre[owner] + noise * torch.randn(values, 4, generator=g)
    weights = torch.arange(1, values + 1, dtype=torch.float64).pow(-exponent) * 1e5
    return rows, weights.ceil(), owner


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when two labelings group the points identically (up to renaming clusters)."""
    pairs = torch.unique(torch.stack([a, b], 1), dim=0)
    return pairs.shape[0] == torch.unique(a).numel() == torch.unique(b).numel()


def test_full_kmeans_recovers_separated_clusters():
    rows, weights, owner = blobs(values=600, centres=4)
    result = kmeans(rows, weights, 4, head_share=1.0, seed=0)
    assert result.head_size == 600
    assert same_partition(result.assignment, owner)
    # rows are the weighted means of members: the error is only the noise, about w·D·σ²
    error = weighted_error(rows, weights, result.assignment, result.rows)
    assert error < float(weights.sum()) * 4 * 0.05**2 * 1.5


def test_same_seed_same_map_and_different_seed_may_differ():
    rows, weights, _ = blobs(noise=1.5)
    first = kmeans(rows, weights, 16, head_share=0.9, seed=3)
    again = kmeans(rows, weights, 16, head_share=0.9, seed=3)
    assert torch.equal(first.assignment, again.assignment) and torch.equal(first.rows, again.rows)
    other = kmeans(rows, weights, 16, head_share=0.9, seed=4)
    assert not torch.equal(first.assignment, other.assignment)


def test_tail_goes_to_the_nearest_head_centroid():
    rows, weights, _ = blobs(values=2000, noise=1.0)
    result = kmeans(rows, weights, 12, head_share=0.6, seed=1)
    assert 12 <= result.head_size < 2000
    tail = weights.sort(descending=True, stable=True).indices[result.head_size:]
    distances = torch.cdist(rows[tail], result.centroids)  # (T, K)
    assert torch.equal(result.assignment[tail], distances.argmin(1))
    # and the head points are assigned to their nearest centroid too (Lloyd converged or stopped there)
    assert torch.equal(nearest_centroid(rows[tail], result.centroids), result.assignment[tail])


def test_head_covers_the_share_of_occurrences():
    weights = torch.tensor([50.0, 30.0, 10.0, 5.0, 3.0, 2.0])
    assert head_size(weights, 0.8, 1) == 2  # 50 + 30 = 80%
    assert head_size(weights, 0.81, 1) == 3
    assert head_size(weights, 0.5, 4) == 4  # never fewer values than clusters
    assert head_size(weights, 1.0, 1) == 6
    with pytest.raises(ConfigError, match="head_share is 0"):
        head_size(weights, 0.0, 1)


def test_fast_clustering_error_close_to_full_on_a_zipf_field():
    rows, weights, _ = blobs(values=5000, centres=32, noise=1.0, exponent=1.2)
    ratios = []
    for seed in range(3):  # k-means ends in a local optimum that depends on the seed: compare the mean
        fast = kmeans(rows, weights, 32, head_share=0.9, seed=seed)
        full = kmeans(rows, weights, 32, head_share=1.0, seed=seed)
        assert fast.head_size < 1000  # the head is a small share of the values
        ratios.append(weighted_error(rows, weights, fast.assignment, fast.rows)
                      / weighted_error(rows, weights, full.assignment, full.rows))
    assert sum(ratios) / 3 < 1.1


def test_cosine_groups_by_direction_not_length():
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    lengths = torch.tensor([0.1, 1.0, 10.0])
    rows = torch.cat([d * lengths.unsqueeze(1) for d in directions])  # (6, 2): 3 lengths per direction
    weights = torch.ones(6, dtype=torch.float64)
    cosine = kmeans(rows, weights, 2, metric=Metric.COSINE, seed=0).assignment
    assert same_partition(cosine, torch.tensor([0, 0, 0, 1, 1, 1]))
    # the stored rows are the raw members' means, not unit vectors
    result = kmeans(rows, weights, 2, metric="cosine", seed=0)
    assert torch.allclose(result.rows.norm(dim=1), torch.full((2,), 3.7), atol=1e-5)


def test_bad_cluster_count_is_a_one_line_error():
    rows, weights, _ = blobs(values=10)
    with pytest.raises(ConfigError, match="cannot make 11 clusters of 10 values"):
        kmeans(rows, weights, 11)


def test_two_level_argmin_matches_argmin_with_ties_and_padding():
    from sharkrec.cluster.kmeans import _argmin_rows

    g = torch.Generator().manual_seed(0)
    for k in (256, 300, 1024):  # a multiple of the group width, a padded one, a large one
        distances = torch.randint(0, 5, (700, k), generator=g).float()  # many ties: the first index must win
        assert torch.equal(_argmin_rows(distances), distances.argmin(1))
        distances = torch.randn(700, k, generator=g)
        assert torch.equal(_argmin_rows(distances), distances.argmin(1))


def test_nearest_centroid_matches_brute_force_for_both_metrics():
    g = torch.Generator().manual_seed(1)
    points, centroids = torch.randn(3000, 8, generator=g), torch.randn(500, 8, generator=g)
    assert torch.equal(nearest_centroid(points, centroids), torch.cdist(points, centroids).argmin(1))
    unit_points = torch.nn.functional.normalize(points, dim=1)
    unit_centroids = torch.nn.functional.normalize(centroids, dim=1)
    assert torch.equal(nearest_centroid(unit_points, unit_centroids, Metric.COSINE),
                       (unit_points @ unit_centroids.T).argmax(1))


@pytest.mark.parametrize("use_extension", [True, False])
def test_nearest_centroid_both_paths_on_odd_shapes_and_ties(use_extension):
    from sharkrec.cluster.kmeans import extension

    if use_extension and extension() is None:
        pytest.skip("no C++ compiler here: the PyTorch path is the one that runs")
    g = torch.Generator().manual_seed(2)
    for n, k, d in ((1, 1, 1), (7, 3, 5), (1001, 17, 16), (513, 1000, 33)):  # short groups, padded blocks
        points, centroids = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
        got = nearest_centroid(points, centroids, use_extension=use_extension)
        distances = torch.cdist(points.double(), centroids.double())
        reached = distances.gather(1, got.unsqueeze(1)).squeeze(1)
        assert bool((reached <= distances.min(1).values + 1e-5).all())  # the nearest, up to float rounding
        assert torch.equal(got, nearest_centroid(points, centroids, use_extension=use_extension))
    same = torch.zeros(40, 4)  # every centroid equally near: the lowest index wins
    assert nearest_centroid(torch.randn(9, 4, generator=g), same, use_extension=use_extension).tolist() == [0] * 9
    doubled = torch.cat([torch.randn(20, 4, generator=g)] * 2)  # centroid j and j + 20 coincide
    assert bool((nearest_centroid(torch.randn(300, 4, generator=g), doubled, use_extension=use_extension) < 20).all())


def test_greedy_seeding_kernel_takes_the_same_steps_as_the_pytorch_path():
    from sharkrec.cluster.kmeans import _greedy_initial_centroids, extension

    if extension() is None:
        pytest.skip("no C++ compiler here: the PyTorch path is the one that runs")
    g = torch.Generator().manual_seed(4)
    for n, k, d in ((5, 5, 3), (37, 4, 1), (100, 17, 33), (3000, 40, 16)):  # k = n, D = 1, D not a lane multiple
        points, weights = torch.randn(n, d, generator=g), torch.rand(n, generator=g, dtype=torch.float64) * 50
        picked = [_greedy_initial_centroids(points, weights, k, torch.Generator().manual_seed(7), use_extension=ext)
                  for ext in (True, False)]
        assert torch.equal(picked[0], picked[1])
    zero_weight = torch.zeros(50, dtype=torch.float64)  # fewer weighted points than centres: uniform mass
    points = torch.randn(50, 4, generator=g)
    seeds = _greedy_initial_centroids(points, zero_weight, 10, torch.Generator().manual_seed(1))
    assert torch.unique(seeds, dim=0).shape[0] == 10


def test_threshold_sample_keeps_hot_values_and_is_unbiased():
    from sharkrec.cluster.kmeans import threshold_sample

    weights = torch.arange(1, 20_001, dtype=torch.float64).pow(-1.2) * 1e6
    sizes, totals = [], []
    for seed in range(20):
        chosen, kept = threshold_sample(weights, 2000, torch.Generator().manual_seed(seed))
        assert torch.equal(chosen, chosen.sort().values) and bool((kept >= weights[chosen]).all())
        tau = float(kept.min())
        assert bool(torch.isin((weights >= tau).nonzero().squeeze(1), chosen).all())  # every hot value is in
        sizes.append(chosen.numel())
        totals.append(float(kept.sum()))
    assert abs(sum(sizes) / 20 - 2000) < 60  # expected size is the size asked for
    assert abs(sum(totals) / 20 / float(weights.sum()) - 1) < 0.01  # weighted sums are unbiased
    again, _ = threshold_sample(weights, 2000, torch.Generator().manual_seed(3))
    assert torch.equal(again, threshold_sample(weights, 2000, torch.Generator().manual_seed(3))[0])
    everything, same = threshold_sample(weights[:100], 2000, torch.Generator().manual_seed(0))
    assert torch.equal(everything, torch.arange(100)) and torch.equal(same, weights[:100])


def test_greedy_seeding_is_deterministic_and_beats_one_draw_per_centroid():
    from sharkrec.cluster.kmeans import _greedy_initial_centroids, _initial_centroids

    rows, weights, _ = blobs(values=4000, centres=64, noise=0.3)

    def potential(centroids: torch.Tensor) -> float:
        return float((torch.cdist(rows, centroids).pow(2).amin(1).double() * weights).sum())

    greedy = [_greedy_initial_centroids(rows, weights, 64, torch.Generator().manual_seed(s)) for s in range(4)]
    plain = [_initial_centroids(rows, weights, 64, torch.Generator().manual_seed(s)) for s in range(4)]
    assert torch.equal(greedy[0], _greedy_initial_centroids(rows, weights, 64, torch.Generator().manual_seed(0)))
    assert not torch.equal(greedy[0], greedy[1])
    # every centroid is one of the points
    assert bool((greedy[0].unsqueeze(1) == rows.unsqueeze(0)).all(2).any(1).all())
    assert sum(map(potential, greedy)) < 0.8 * sum(map(potential, plain))


def test_fast_clustering_samples_the_head_and_matches_full_error():
    rows, weights, _ = blobs(values=40_000, centres=128, noise=1.0, exponent=1.1)
    ratios = []
    for seed in range(4):  # local optima depend on the seed: compare the mean
        fast = kmeans(rows, weights, 64, head_share=0.95, seed=seed)
        full = kmeans(rows, weights, 64, head_share=1.0, seed=seed)
        assert full.sample_size == 40_000 and fast.sample_size < fast.head_size  # Lloyd saw a sample of the head
        assert torch.equal(fast.assignment, nearest_centroid(rows, fast.centroids))  # every value at its nearest
        ratios.append(weighted_error(rows, weights, fast.assignment, fast.rows)
                      / weighted_error(rows, weights, full.assignment, full.rows))
    assert sum(ratios) / 4 < 1.01
    again = kmeans(rows, weights, 64, head_share=0.95, seed=3)
    assert torch.equal(again.assignment, fast.assignment) and torch.equal(again.rows, fast.rows)
