"""field_statistics: float32 batch products with a shift match a float64 computation, at any batch size."""

from __future__ import annotations

import torch

from sharkrec.importance.taylor import field_statistics


class _Vectors:
    """Stands in for a model: ``field_vectors`` returns the stored (N, F, D) rows of the batch."""

    def __init__(self, vectors: torch.Tensor) -> None:
        self.vectors = vectors

    def field_vectors(self, batch: torch.Tensor) -> torch.Tensor:
        return self.vectors[batch]


class _Split:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int, shuffle: bool = False) -> list[torch.Tensor]:
        return list(torch.arange(self.n).split(batch_size))


def test_mean_and_covariance_match_float64_even_with_a_large_offset() -> None:
    generator = torch.Generator().manual_seed(0)
    # mean 50, spread 0.01: E[vvᵀ] − EEᵀ would lose every digit in float32 without the shift
    vectors = (50.0 + 0.01 * torch.randn(3000, 4, 6, generator=generator)).float()
    exact = vectors.double()
    mean = exact.mean(0)
    centred = exact - mean
    covariance = torch.einsum("bfd,bfe->fde", centred, centred) / len(exact)
    for batch_size in (64, 4096):
        got_mean, got_cov = field_statistics(_Vectors(vectors), _Split(3000), batch_size)  # type: ignore[arg-type]
        assert torch.allclose(got_mean, mean, rtol=1e-9, atol=1e-9)
        assert torch.allclose(got_cov, covariance, rtol=1e-4, atol=1e-4 * covariance.abs().max().item())
