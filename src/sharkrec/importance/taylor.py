"""F-Permutation: Taylor estimates of field importance from one statistics pass and one forward + backward.

SHARK §3.1. For field i, sample x with field vector v = v_i(x) (D,), task logits z_t(x) and task-weighted
loss ``L = Σ_t w_t · BCE(y_t, σ(z_t))``, the exact importance (Eq. 1 / 2) is
``mean_x E_{v'~P_i}[L(v') − L(v)]``. From J_t = ∂z_t/∂v_i (one backward per task of the summed logits,
so every per-sample term is exact and batching changes nothing) the variants are:

- ``taylor`` (Eq. 4, as printed): ``∂L/∂v_i · (E_i − v)``, signed, averaged over x.
- ``taylor-abs``: the per-sample absolute value of the same term.
- ``taylor2``: adds the Gauss–Newton second-order term
  ``E_{v'}[½ Σ_t w_t p_t(1−p_t) (J_t·(v'−v))²] = ½ Σ_t w_t p_t(1−p_t) ((J_t·(E_i−v))² + J_tᵀ Σ_i J_t)``.
- ``taylor-logit``: linearise the logit only, keep the loss exact:
  ``z'_t = z_t + J_t·(r_k − v)`` for K reference vectors r_k of the field (the field vectors of K rows drawn
  once from the scored data, the same for every batch), score ``mean_k L(z') − L(z)``.

E_i (D,) and Σ_i (D, D) are the frequency-weighted mean and covariance of field i's pooled vectors
over the scored data, from one forward pass of the field vectors. The dense field is scored the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sharkrec import distributed
from sharkrec.data.dataset import EncodedSplit
from sharkrec.errors import ConfigError
from sharkrec.importance.base import FieldImportance, ImportanceMethod, block_means, block_size, make_result, sweep
from sharkrec.model.protocol import FieldPathModel

VARIANTS = ("taylor", "taylor-abs", "taylor2", "taylor-logit")


@torch.no_grad()
def field_statistics(model: FieldPathModel, split: EncodedSplit, batch_size: int) -> tuple[Tensor, Tensor]:
    """Mean E (F, D) and covariance Σ (F, D, D), float64, of the field vectors over ``split``.

    Pooled multi-hot vectors and the dense field's bottom-MLP output are treated like any vector, so
    E_i is the frequency-weighted mean of field i's table rows (Eq. 4's ``E(v_i)``).

    Each batch's outer products are one float32 ``bmm`` (F, D, B) x (F, B, D) of vectors shifted by the
    first batch's mean (so E[vvᵀ] − EEᵀ does not cancel), summed across batches in float64.

    Under torchrun ``split`` is this rank's shard (:func:`sharkrec.distributed.shard_batches`): the shift
    is rank 0's first batch mean and the sums and sample counts are all-reduced, so every rank gets
    the statistics of the whole split.
    """
    total: Tensor | None = None
    outer: Tensor | None = None
    shift: Tensor | None = None
    for batch in sweep(split, batch_size):
        vectors = model.field_vectors(batch)  # (B, F, D) float32
        if shift is None:
            shift = distributed.broadcast(vectors.mean(0).contiguous())  # (F, D): rank 0's first batch
        centred = (vectors - shift).transpose(0, 1)  # (F, B, D)
        batch_outer = torch.bmm(centred.transpose(1, 2), centred).double()  # (F, D, D)
        batch_total = centred.double().sum(1)  # (F, D)
        total = batch_total if total is None else total + batch_total
        outer = batch_outer if outer is None else outer + batch_outer
    assert total is not None and outer is not None and shift is not None  # the split is not empty
    total, outer, count = distributed.all_reduce_sum(total, outer, torch.tensor(float(len(split)), dtype=torch.float64))
    centred_mean = total / count  # E[v] − shift
    covariance = outer / count - torch.einsum("fd,fe->fde", centred_mean, centred_mean)
    return centred_mean + shift.double(), covariance


@torch.no_grad()
def reference_vectors(model: FieldPathModel, split: EncodedSplit, draws: int, seed: int) -> Tensor:
    """(K, F, D) field vectors of K rows drawn (without replacement when possible) from ``split``."""
    generator = torch.Generator().manual_seed(int(seed))
    n = len(split)
    index = torch.randperm(n, generator=generator)[:draws] if draws <= n else torch.randint(
        0, n, (draws,), generator=generator)
    return model.field_vectors(split.batch(index)).double()


def logit_jacobians(model: FieldPathModel, vectors: Tensor) -> tuple[Tensor, Tensor]:
    """Logits z (B, T) and J = ∂z_t/∂v (B, F, T, D) of a batch of field vectors (B, F, D).

    One backward of ``z[:, t].sum()`` per task: samples do not interact (eval mode), so the gradient
    of the sum is every sample's own gradient.
    """
    vectors = vectors.detach().requires_grad_(True)
    logits = model.logits_from_fields(vectors)  # (B, T)
    tasks = logits.shape[1]
    jacobians = []
    for t in range(tasks):
        (grad,) = torch.autograd.grad(logits[:, t].sum(), vectors, retain_graph=t < tasks - 1)
        jacobians.append(grad)
    return logits.detach(), torch.stack(jacobians, dim=2)  # (B, T), (B, F, T, D)


def taylor_terms(logits: Tensor, labels: Tensor, vectors: Tensor, jacobians: Tensor, mean: Tensor,
                 covariance: Tensor, references: Tensor | None, task_weights: Tensor) -> dict[str, Tensor]:
    """Per-sample scores (B, F) of every variant for one batch (float64; products of D-vectors in float32).

    Shapes: logits, labels (B, T); vectors (B, F, D); jacobians (B, F, T, D); mean (F, D);
    covariance (F, D, D); references (K, F, D) or None (then no ``taylor-logit``); task_weights (T,).
    """
    # the heavy (B, F, T, D) products in float32 (one bmm for JᵀΣJ); the (B, F, T) results in float64
    jac32 = jacobians.float()
    batch, fields, tasks, dim = jac32.shape
    delta = mean.float().unsqueeze(0) - vectors.float()  # (B, F, D)
    j_delta = torch.einsum("bftd,bfd->bft", jac32, delta).double()  # J_t·(E_i − v)
    by_field = jac32.permute(1, 0, 2, 3).reshape(fields, batch * tasks, dim)  # (F, B·T, D)
    j_sigma = torch.bmm(by_field, covariance.float())  # (F, B·T, D): J_tᵀ Σ_i
    j_sigma_j = (j_sigma * by_field).sum(-1).reshape(fields, batch, tasks).transpose(0, 1).double()  # (B, F, T)
    z, y, w = logits.double(), labels.double(), task_weights.double()
    p = torch.sigmoid(z)  # (B, T)
    first = (j_delta * (w * (p - y)).unsqueeze(1)).sum(-1)  # (B, F): ∂L/∂v_i · (E_i − v), Eq. 4
    curvature = (w * p * (1 - p)).unsqueeze(1)  # (B, 1, T)
    second = 0.5 * ((j_delta.square() + j_sigma_j) * curvature).sum(-1)  # (B, F)
    out = {"taylor": first, "taylor-abs": first.abs(), "taylor2": first + second}
    if references is not None:
        # float32 here: K BCE evaluations per sample and field dominate the cost (results summed in float64)
        y32, w32, z32 = labels.float(), task_weights.float(), logits.float()
        j_v = torch.einsum("bftd,bfd->bft", jac32, vectors.float())  # (B, F, T)
        j_ref = torch.einsum("bftd,kfd->bftk", jac32, references.float())  # (B, F, T, K)
        shifted = j_ref.sub_(j_v.unsqueeze(-1)).add_(z32[:, None, :, None])  # z' (B, F, T, K)
        target = y32[:, None, :, None].expand_as(shifted)
        new_loss = F.binary_cross_entropy_with_logits(shifted, target, reduction="none")  # (B, F, T, K)
        new_loss = (new_loss.mean(-1) * w32).sum(-1)  # (B, F)
        old_loss = (F.binary_cross_entropy_with_logits(z32, y32, reduction="none") * w32).sum(-1)  # (B,)
        out["taylor-logit"] = (new_loss - old_loss.unsqueeze(1)).double()
    return out


def taylor_family(model: FieldPathModel, split: EncodedSplit, *, batch_size: int = 4096, draws: int = 16,
                  fields: Sequence[str] | None = None, max_samples: int | None = None, seed: int = 0,
                  task_weights: Sequence[float] | None = None) -> dict[str, FieldImportance]:
    """All four variants from the same passes (one statistics pass, one forward + backward per batch).

    ``seconds`` of each result is the time of the whole shared computation.
    """
    method = TaylorLogit(model, draws=draws, task_weights=task_weights)
    method.keep_all = True
    result = method.attribute(split, batch_size=batch_size, fields=fields, max_samples=max_samples, seed=seed)
    assert method.last_family is not None
    out = {}
    for name, (positions, raw, weights, samples, passes) in method.last_family.items():
        out[name] = make_result(name, result.field_names, positions, raw, weights, samples, result.seconds, passes)
    return out


class _TaylorBase(ImportanceMethod):
    """Shared pass of the Taylor variants; ``name`` picks which one :meth:`attribute` returns.

    Args:
        model, task_weights: see :class:`ImportanceMethod`.
        draws: K, reference vectors per field for ``taylor-logit``.

    ``passes`` = 1 (statistics: field vectors only) + 1 forward + T backward sweeps (backward counted
    as one pass; measured seconds are in ``benchmarks/importance_cost.py``).
    """

    name: ClassVar[str] = ""

    def __init__(self, model: FieldPathModel, *, draws: int = 16, task_weights: Sequence[float] | None = None) -> None:
        super().__init__(model, task_weights=task_weights)
        if draws < 1:
            raise ConfigError(f"draws {draws} must be 1 or more (reference vectors per field for taylor-logit)")
        self.draws = int(draws)
        self.keep_all = False
        self.last_family: dict[str, tuple[Any, ...]] | None = None

    def _attribute(self, split: EncodedSplit, batch_size: int, positions: list[int], seed: int,
                   **options: Any) -> tuple[np.ndarray, np.ndarray, int, float]:
        if options:
            raise ConfigError(f"unknown options {sorted(options)} for method {self.name!r}")
        model = self.model
        # under torchrun: this rank's whole batches; statistics all-reduced, per-batch rows gathered below
        local = distributed.shard_batches(split, batch_size, "scored split")
        mean, covariance = field_statistics(model, local, batch_size)
        want_logit = self.keep_all or self.name == "taylor-logit"
        references = reference_vectors(model, split, self.draws, seed) if want_logit else None
        pos = torch.tensor(positions)
        mean, covariance = mean[pos], covariance[pos]
        if references is not None:
            references = references[:, pos]
        raws: dict[str, list[np.ndarray]] = {}
        sizes = []
        block = block_size(len(split), batch_size)  # of the whole split: every rank cuts the same blocks
        for batch in sweep(local, batch_size):
            with torch.no_grad():
                vectors = model.field_vectors(batch)  # (B, F, D)
            logits, jacobians = logit_jacobians(model, vectors)
            terms = taylor_terms(logits, batch.labels, vectors[:, pos], jacobians[:, pos], mean, covariance,
                                 references, self.task_weights)
            for name, values in terms.items():
                rows, counts = block_means(values, block)
                raws.setdefault(name, []).append(rows)
            sizes.append(counts)
        # block means and their sample counts from every rank, in rank order = one process's blocks
        weights = distributed.gather_rows(np.concatenate(sizes))
        stacked = {name: distributed.gather_rows(np.concatenate(rows)) for name, rows in raws.items()}
        passes = 2.0 + model.num_tasks
        self.last_family = {name: (positions, rows, weights, len(split), passes) for name, rows in stacked.items()}
        return stacked[self.name], weights, len(split), passes


class Taylor(_TaylorBase):
    """The paper's signed first-order score (Eq. 4 averaged by Eq. 2), kept for fidelity."""

    name: ClassVar[str] = "taylor"


class TaylorAbs(_TaylorBase):
    """Mean over samples of |∂L/∂v_i · (E_i − v_i)|."""

    name: ClassVar[str] = "taylor-abs"


class Taylor2(_TaylorBase):
    """First order plus the Gauss–Newton second-order term (uses E_i and Σ_i): the default.

    Chosen in ``benchmarks/importance_ranking.py``: the most accurate against ``exact`` at about 3x the
    cost of a forward pass (``taylor-logit`` ranks as well but its K loss evaluations cost more).
    """

    name: ClassVar[str] = "taylor2"


class TaylorLogit(_TaylorBase):
    """Logit-linearised Eq. 1 with the exact loss over K reference vectors per field."""

    name: ClassVar[str] = "taylor-logit"
