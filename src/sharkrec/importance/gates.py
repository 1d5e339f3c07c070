"""Shared machinery of the learned field-selection baselines (FSCD, AutoField, AdaFS, UMEC).

These methods do not measure a trained model: they train new parameters (one gate per field, or a
controller) on a **deep copy** of it, jointly fine-tuning the copy's weights as the papers do, and rank
fields by the learned gates. The user's model is never changed. A gate g (B or 1, P) multiplies the
field vectors, ``v_i ← g_i · v_i`` (B, F, D), for the P scored fields (unscored fields keep gate 1).

The cost is counted like every other method's: ``seconds`` is the wall time of the whole search and
``passes`` = 3 x (samples pushed through a forward + backward) / (scored samples): one forward and
a backward counted as two.

Hyper-parameters follow SHARK §4.1.2's protocol for competitors: lr from :data:`LR_GRID`, L2 from
:data:`L2_GRID`, chosen on validation only (:func:`tune_learned`).
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from sharkrec.data.batch import Batch
from sharkrec.data.dataset import EncodedSplit
from sharkrec.errors import ConfigError
from sharkrec.importance.base import ImportanceMethod, get_method, sweep
from sharkrec.model.protocol import FieldPathModel
from sharkrec.train.metrics import roc_auc

LR_GRID = (1e-2, 5e-3, 1e-3, 5e-4, 1e-4)
L2_GRID = (1e-4, 1e-5, 1e-6, 1e-7, 1e-8)


def positive(method: str, name: str, value: float, example: str) -> float:
    """``value`` as a float; one-line ConfigError unless it is a finite number > 0."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{method} {name} {value!r} must be a positive number such as {example}")
    return float(value)


class LearnedSelection(ImportanceMethod):
    """Base of the gate-training methods: checks settings, copies the model, counts the cost.

    Args:
        model, task_weights: see :class:`ImportanceMethod`.
        lr: step size of the gate / controller parameters (Adam).
        l2: L2 penalty on the looked-up field vectors of the jointly fine-tuned copy.
        epochs: passes over the fitting split.
        model_lr: Adam step size of the copy's weights (0 freezes them: gates only); default 1e-3 from scratch,
            1e-4 when fine-tuning the trained weights.
        from_scratch: search on a freshly initialised copy (same architecture, seeded), training weights and
            gates together from the start as the papers' search stages do; ``False``: start from the trained
            weights and fine-tune them jointly with the gates.
        gate_batch_size: batch size of the search (``attribute``'s ``batch_size`` only batches scoring sweeps).
        train: the split the model weights (and single-level gates) fit on, e.g. the training split;
            ``None``: the scored split itself (bi-level methods then cut it into two halves).
        max_train_samples: use at most this many samples of ``train`` (its first ones).
    """

    name: ClassVar[str] = ""
    std_method: ClassVar[str] = "none: one trained gate per field (retrain with other seeds for a spread)"

    def __init__(self, model: FieldPathModel, *, lr: float, l2: float, epochs: int, from_scratch: bool,
                 model_lr: float | None = None, gate_batch_size: int = 256, train: EncodedSplit | None = None,
                 max_train_samples: int | None = None, task_weights: Sequence[float] | None = None) -> None:
        super().__init__(model, task_weights=task_weights)
        method = self.name
        self.lr = positive(method, "lr", lr, "1e-3")
        if not (isinstance(l2, int | float) and math.isfinite(l2) and l2 >= 0):
            raise ConfigError(f"{method} l2 {l2!r} must be 0 or a positive number such as 1e-6")
        model_lr = (1e-3 if from_scratch else 1e-4) if model_lr is None else model_lr
        if not (isinstance(model_lr, int | float) and math.isfinite(model_lr) and model_lr >= 0):
            raise ConfigError(f"{method} model_lr {model_lr!r} must be 0 (freeze the weights) or positive")
        if from_scratch and model_lr == 0:
            raise ConfigError(f"{method}: a search from scratch must train the weights; give model_lr > 0")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"{method} epochs {epochs!r} must be an integer of 1 or more")
        if gate_batch_size < 1:
            raise ConfigError(f"{method} gate_batch_size {gate_batch_size} must be 1 or more")
        if max_train_samples is not None and max_train_samples < 1:
            raise ConfigError(f"{method} max_train_samples {max_train_samples} must be 1 or more")
        if train is not None and len(train) == 0:
            raise ConfigError(f"{method}: the training split is empty; give one with samples or train=None")
        if train is not None and max_train_samples is not None and max_train_samples < len(train):
            train = train.subset(np.arange(max_train_samples))
        self.l2, self.epochs, self.model_lr = float(l2), int(epochs), float(model_lr)
        self.gate_batch_size, self.train, self.from_scratch = int(gate_batch_size), train, bool(from_scratch)

    def _attribute(self, split: EncodedSplit, batch_size: int, positions: list[int], seed: int,
                   **options: Any) -> tuple[np.ndarray, np.ndarray, int, float]:
        if options:
            raise ConfigError(f"unknown options {sorted(options)} for method {self.name!r}")
        work = self.working_copy(seed)  # the search trains this copy; the user's model stays as it is
        search = Search(self, work, positions, seed)
        scores = self._search(search, split, batch_size)
        return scores.reshape(1, -1), np.ones(1), len(split), 3.0 * search.samples / len(split)

    def working_copy(self, seed: int) -> FieldPathModel:
        """A deep copy of the model, or (``from_scratch``) the model's own fresh copy seeded by ``seed``
        (:meth:`~sharkrec.model.protocol.FieldPathModel.fresh_copy`: a DLRM of its config, a wrapped user
        network with every weight re-initialised); the caller's random state is left as it was."""
        if not self.from_scratch:
            return copy.deepcopy(self.model).eval()
        return self.model.fresh_copy(int(seed)).eval()

    @abc.abstractmethod
    def _search(self, search: Search, split: EncodedSplit, batch_size: int) -> np.ndarray:
        """Train the gates with ``search`` and return (P,) scores of the scored fields (larger = keep)."""

    def fit_and_control(self, split: EncodedSplit, seed: int) -> tuple[EncodedSplit, EncodedSplit]:
        """(split the weights fit on, split the controller fits on) of a bi-level method.

        With ``train`` given: (train, scored split), as AutoField / AdaFS do (train vs validation). Without:
        the scored split cut in two halves by a seeded permutation, so the two levels never share samples.
        """
        if self.train is not None:
            return self.train, split
        if len(split) < 2:
            raise ConfigError(f"{self.name} needs at least 2 samples to cut into fit and control halves")
        order = np.random.default_rng(seed).permutation(len(split))
        half = len(split) // 2
        return split.subset(np.sort(order[:half])), split.subset(np.sort(order[half:]))


class Search:
    """One search on the working copy: gated forward passes, the copy's optimiser, a sample counter.

    Shapes: ``gates`` (B or 1, P) for the P scored fields → (B or 1, F, 1) multipliers of the (B, F, D) vectors.
    """

    def __init__(self, method: LearnedSelection, model: FieldPathModel, positions: list[int], seed: int) -> None:
        self.method, self.model, self.seed = method, model, int(seed)
        self.positions = torch.tensor(positions, dtype=torch.int64)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.samples = 0.0  # samples through a forward + backward (a forward alone counts 1/3)
        self.fine_tune = method.model_lr > 0
        sparse = list(model.embedding.sparse_parameters())
        sparse_ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
        self.optimizers: list[torch.optim.Optimizer] = []
        if self.fine_tune:
            self.optimizers.append(torch.optim.Adam(dense, lr=method.model_lr))
            if sparse:
                self.optimizers.append(torch.optim.SparseAdam(sparse, lr=method.model_lr))
        for p in model.parameters():
            p.requires_grad_(self.fine_tune)

    def batches(self, split: EncodedSplit, epoch: int) -> Iterator[Batch]:
        return split.batches(self.method.gate_batch_size, shuffle=True, seed=self.seed, epoch=epoch)

    def full_gates(self, gates: Tensor) -> Tensor:
        """(B or 1, P) gates of the scored fields → (B or 1, F, 1), 1 for the unscored fields."""
        ones = torch.ones(gates.shape[0], self.model.num_fields, dtype=gates.dtype)
        return ones.index_copy(1, self.positions, gates).unsqueeze(-1)

    def vectors(self, batch: Batch, *, train_weights: bool) -> Tensor:
        """(B, F, D) field vectors, with a graph into the copy's weights only when they are trained."""
        if train_weights and self.fine_tune:
            return self.model.field_vectors(batch)
        with torch.no_grad():
            return self.model.field_vectors(batch)

    def loss(self, batch: Batch, vectors: Tensor, gates: Tensor, *, train_weights: bool) -> Tensor:
        """Mean task-weighted BCE of the gated vectors (+ the L2 penalty when the weights train)."""
        self.samples += len(batch)
        logits = self.model.logits_from_fields(vectors * self.full_gates(gates), batch)
        loss = self.method.loss_per_sample(logits, batch.labels).mean()
        if train_weights and self.fine_tune and self.method.l2 > 0:
            loss = loss + self.method.l2 * vectors.square().sum(-1).mean()
        return loss

    def backward(self, loss: Tensor) -> None:
        """Back-propagate ``loss`` and step the copy's weights (when they train); gate optimisers step after."""
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in self.optimizers:
            optimizer.step()

    def gumbel(self, shape: tuple[int, ...]) -> Tensor:
        """Standard Gumbel noise of ``shape``, from the search's seeded generator."""
        uniform = torch.rand(shape, generator=self.generator).clamp_(1e-10, 1 - 1e-10)
        return -torch.log(-torch.log(uniform))

    def logistic(self, shape: tuple[int, ...]) -> Tensor:
        """``log u − log(1 − u)`` noise of ``shape`` (the concrete / relaxed-Bernoulli noise)."""
        uniform = torch.rand(shape, generator=self.generator).clamp_(1e-10, 1 - 1e-10)
        return torch.log(uniform) - torch.log1p(-uniform)


def cycle(search: Search, split: EncodedSplit) -> Iterator[Batch]:
    """Batches of ``split`` forever, reshuffled each epoch (the controller's validation stream)."""
    epoch = 0
    while True:
        yield from search.batches(split, 1_000_000 + epoch)
        epoch += 1


def mean_replaced_auc(model: FieldPathModel, split: EncodedSplit, scores: np.ndarray, keeps: Sequence[int],
                      batch_size: int = 4096) -> list[float]:
    """Validation AUC (first task) of ``model`` keeping its ``k`` best-scored fields, for each k in ``keeps``, the
    others replaced by their mean vector E[v_i] over ``split`` (what pruning does): how useful a ranking is to
    the trained model, without retraining. Shapes: field vectors (N, F, D), computed once."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    model = model.eval()
    labels = split.labels[:, 0].numpy()
    with torch.no_grad():
        # (vectors (B, F, D), batch) per batch: a wrapped user network needs the batch's own inputs again
        swept = [(model.field_vectors(b), b) for b in sweep(split, batch_size)]
        mean = torch.cat([v for v, _ in swept]).mean(0)  # (F, D)
        out = []
        for keep in keeps:
            dropped = torch.tensor(sorted(order[keep:].tolist()), dtype=torch.int64)
            logits = []
            for vectors, batch in swept:
                chunk = vectors.clone()
                chunk[:, dropped] = mean[dropped]
                logits.append(model.logits_from_fields(chunk, batch)[:, 0])
            out.append(roc_auc(labels, torch.cat(logits).numpy()))
    return out


@dataclass(frozen=True)
class TuneResult:
    """The chosen lr and L2 of a learned method and the validation AUC of every grid point."""

    lr: float
    l2: float
    table: tuple[tuple[float, float, float], ...]  # (lr, l2, validation AUKC)


def tune_learned(method: str, model: FieldPathModel, train: EncodedSplit, valid: EncodedSplit, *,
                 lrs: Sequence[float] = LR_GRID, l2s: Sequence[float] = L2_GRID, seed: int = 0,
                 **options: Any) -> TuneResult:
    """Pick lr x L2 from the grids by validation AUKC: the mean over k = 1..F−1 of :func:`mean_replaced_auc` on
    ``valid`` (ties go to the earlier grid point); the test split is never read. ``options`` go to the method
    (epochs, temperature ...)."""
    cls = get_method(method)
    if not issubclass(cls, LearnedSelection):
        raise ConfigError(f"method {method!r} trains no gates; tune only fscd, autofield, adafs or umec")
    keeps = list(range(1, max(2, model.num_fields)))
    table = []
    for lr in lrs:
        for l2 in l2s:
            result = cls(model, lr=lr, l2=l2, train=train, **options).attribute(valid, seed=seed)
            aukc = float(np.mean(mean_replaced_auc(model, valid, result.scores, keeps)))
            table.append((float(lr), float(l2), aukc))
    best = max(table, key=lambda row: row[2])
    return TuneResult(best[0], best[1], tuple(table))
