"""The learned field-selection baselines of SHARK Figure 2 / Table 2 and ERASE: FSCD, AutoField, AdaFS, UMEC.

Each trains gate (or controller) parameters on a copy of the model together with the copy's weights
(:class:`~sharkrec.importance.gates.LearnedSelection`; by default a fresh copy trained from scratch, as the
papers' search stages do) and scores field i by its learned keep strength.

Defaults: lr and L2 were chosen by :func:`~sharkrec.importance.gates.tune_learned` on
``SyntheticConfig.small()`` (a model trained as in ``tests/importance/conftest.py``) from SHARK §4.1.2's
grid, by validation AUKC (mean over k of the validation AUC with the k best fields kept and the rest
replaced by their mean vector). Validation AUKC per lr (L2 1e-6; no L2 in 1e-4 … 1e-8 changed any
ranking, ties go to 1e-4):

==========  ======  ======  ======  ======  ======  ======
method      1e-2    5e-3    1e-3    5e-4    1e-4    chosen
==========  ======  ======  ======  ======  ======  ======
fscd        0.6608  0.6703  0.6703  0.6710  0.6710  5e-4
autofield   0.6698  0.6694  0.6737  0.6744  0.6744  5e-4
umec        0.6779  0.6563  0.6703  0.6575  0.6497  1e-2
adafs       0.6468  0.6450  0.6753  0.6740  0.6757  1e-4
==========  ======  ======  ======  ======  ======  ======

The other settings (search from scratch, 3 epochs, FSCD strength, UMEC ρ, temperatures) were set by hand
in a small probe on the same data: searching from scratch gave a higher validation AUKC than fine-tuning
the trained weights for every method (e.g. UMEC 0.6779 vs 0.6652 at lr 1e-2).

OptFS (Lyu et al., WWW 2023) is not here: it learns one gate per feature *value* (embedding row), so
it needs the batch's ids per field and the tables' row count inside the search, outside the
field-vector interface every method here shares (``field_vectors`` → gates → ``logits_from_fields``);
its field ranking would be an aggregate of row gates that ERASE defines separately.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from sharkrec.data.dataset import EncodedSplit
from sharkrec.errors import ConfigError
from sharkrec.importance.gates import LearnedSelection, Search, cycle, positive
from sharkrec.model.dlrm import DENSE_FIELD
from sharkrec.model.protocol import FieldPathModel


class FSCD(LearnedSelection):
    """Feature Selection based on Complexity and variational Dropout (Ma et al., SIGIR 2021, §3 "FSCD").

    Each scored field j has a keep probability θ_j = σ(a_j); during training its vector is multiplied by a
    relaxed Bernoulli (concrete) sample ``z_j = σ((a_j + log u − log(1−u)) / t)``, u ~ U(0, 1) per sample
    and field, and the loss is ``L_CE + Σ_j α_j θ_j`` with the complexity-aware prior weight
    ``α_j = strength · c_j`` (a field whose prior keep probability is lower — a costlier field — pays more
    to be kept). c_j is the field's complexity, here ``log(1 + rows_j)`` (the dense field: its feature
    count) normalised to mean 1 over the scored fields, or 1 for all with ``complexity="uniform"``.
    Gates and the copy's weights train jointly on ``train`` (single level, as in the paper); after
    training the paper keeps the fields with θ_j above a threshold, so θ_j is the score.

    Defaults: lr 5e-4 (gates, Adam), l2 1e-4, from scratch (model_lr 1e-3), t 0.5, strength 1e-2, 3 epochs.
    """

    name: ClassVar[str] = "fscd"

    def __init__(self, model: FieldPathModel, *, lr: float = 5e-4, l2: float = 1e-4, epochs: int = 3,
                 temperature: float = 0.5, strength: float = 1e-2, complexity: str = "log-rows",
                 from_scratch: bool = True, task_weights: Sequence[float] | None = None, **options: Any) -> None:
        super().__init__(model, lr=lr, l2=l2, epochs=epochs, from_scratch=from_scratch, task_weights=task_weights,
                         **options)
        self.temperature = positive("fscd", "temperature", temperature, "0.5")
        self.strength = positive("fscd", "strength", strength, "1e-3")
        if complexity not in ("log-rows", "uniform"):
            raise ConfigError(f"fscd complexity {complexity!r} is not known; use log-rows or uniform")
        self.complexity = complexity

    def field_complexity(self, positions: torch.Tensor) -> torch.Tensor:
        """(P,) c_j of the scored fields, mean 1."""
        if self.complexity == "uniform":
            return torch.ones(len(positions))
        rows = dict(self.model.field_rows())
        if self.model.num_dense:
            rows[DENSE_FIELD] = self.model.num_dense
        names = [self.model.field_names[int(i)] for i in positions]
        raw = torch.tensor([math.log1p(rows[n]) for n in names], dtype=torch.float32)
        return raw / raw.mean()

    def _search(self, search: Search, split: EncodedSplit, batch_size: int) -> np.ndarray:
        fit = self.train if self.train is not None else split
        logits_keep = torch.zeros(len(search.positions), requires_grad=True)  # a_j: θ_j = 0.5 at the start
        optimizer = torch.optim.Adam([logits_keep], lr=self.lr)
        alpha = self.strength * self.field_complexity(search.positions)  # (P,)
        for epoch in range(self.epochs):
            for batch in search.batches(fit, epoch):
                noise = search.logistic((len(batch), len(search.positions)))  # (B, P)
                gates = torch.sigmoid((logits_keep + noise) / self.temperature)  # (B, P) relaxed Bernoulli
                vectors = search.vectors(batch, train_weights=True)
                loss = search.loss(batch, vectors, gates, train_weights=True)
                loss = loss + (alpha * torch.sigmoid(logits_keep)).sum()
                optimizer.zero_grad(set_to_none=True)
                search.backward(loss)
                optimizer.step()
        return torch.sigmoid(logits_keep).detach().double().numpy()


class _BiLevel(LearnedSelection):
    """Shared loop of AutoField and AdaFS: DARTS-style alternation, first-order.

    Per step: (1) the copy's weights take one step on a training batch with the controller fixed;
    (2) the controller takes one step on a validation batch with the weights fixed. The Gumbel / softmax
    temperature anneals as ``τ_t = max(τ_min, τ_0 − anneal · t)``.
    """

    name: ClassVar[str] = ""
    min_temperature: ClassVar[float] = 0.01

    def __init__(self, model: FieldPathModel, *, lr: float, l2: float, epochs: int, temperature: float, anneal: float,
                 from_scratch: bool, task_weights: Sequence[float] | None = None, **options: Any) -> None:
        super().__init__(model, lr=lr, l2=l2, epochs=epochs, from_scratch=from_scratch, task_weights=task_weights,
                         **options)
        self.temperature = positive(self.name, "temperature", temperature, "1.0")
        if not (math.isfinite(anneal) and anneal >= 0):
            raise ConfigError(f"{self.name} anneal {anneal!r} must be 0 or a small positive number such as 1e-3")
        self.anneal = float(anneal)

    def _search(self, search: Search, split: EncodedSplit, batch_size: int) -> np.ndarray:
        fit, control = self.fit_and_control(split, search.seed)
        controller = self.build_controller(search)
        optimizer = torch.optim.Adam(controller.parameters(), lr=self.lr)
        validation = cycle(search, control)
        step = 0
        for epoch in range(self.epochs):
            for batch in search.batches(fit, epoch):
                tau = max(self.min_temperature, self.temperature - self.anneal * step)
                if search.fine_tune:  # level 1: weights on train, controller fixed
                    vectors = search.vectors(batch, train_weights=True)
                    with torch.no_grad():
                        gates = self.gates(controller, search, vectors, tau)
                    search.backward(search.loss(batch, vectors, gates, train_weights=True))
                held_out = next(validation)  # level 2: controller on validation, weights fixed
                vectors = search.vectors(held_out, train_weights=False)
                loss = search.loss(held_out, vectors, self.gates(controller, search, vectors, tau), train_weights=False)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
        return self.scores(controller, search, split, batch_size)

    def build_controller(self, search: Search) -> nn.Module:
        raise NotImplementedError

    def gates(self, controller: nn.Module, search: Search, vectors: torch.Tensor, tau: float) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, controller: nn.Module, search: Search, split: EncodedSplit, batch_size: int) -> np.ndarray:
        raise NotImplementedError


class _KeepDrop(nn.Module):
    """AutoField's controller: α (P, 2) logits of (drop, keep) per field, 0.5 / 0.5 at the start."""

    def __init__(self, fields: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((fields, 2), 0.5))


class AutoField(_BiLevel):
    """AutoField (Wang et al., WWW 2022, §2.2 "controller" and §2.3 "optimization").

    Each field j has two architecture weights α_j = (α_j^drop, α_j^keep); a sample's field vector is
    multiplied by the Gumbel-softmax keep probability ``p_j = softmax((α_j + g) / τ)[keep]`` (g Gumbel
    noise per sample). Bi-level optimisation (first-order DARTS, as the paper): the model's weights take a
    step on a training batch, then α on a validation batch. The score is the noise-free
    ``softmax(α_j)[keep]``; the paper keeps the top fields by it and retrains.

    Defaults: lr 5e-4 (controller, Adam), l2 1e-4, from scratch (model_lr 1e-3), τ_0 1.0 annealed by 1e-3
    per step to 0.01, 3 epochs.
    """

    name: ClassVar[str] = "autofield"

    def __init__(self, model: FieldPathModel, *, lr: float = 5e-4, l2: float = 1e-4, epochs: int = 3,
                 temperature: float = 1.0, anneal: float = 1e-3, from_scratch: bool = True,
                 task_weights: Sequence[float] | None = None, **options: Any) -> None:
        super().__init__(model, lr=lr, l2=l2, epochs=epochs, temperature=temperature, anneal=anneal,
                         from_scratch=from_scratch, task_weights=task_weights, **options)

    def build_controller(self, search: Search) -> nn.Module:
        return _KeepDrop(len(search.positions))

    def gates(self, controller: nn.Module, search: Search, vectors: torch.Tensor, tau: float) -> torch.Tensor:
        alpha = controller.alpha  # (P, 2)
        noise = search.gumbel((len(vectors), *alpha.shape))  # (B, P, 2)
        return torch.softmax((alpha + noise) / tau, dim=-1)[..., 1]  # (B, P)

    def scores(self, controller: nn.Module, search: Search, split: EncodedSplit, batch_size: int) -> np.ndarray:
        return torch.softmax(controller.alpha.detach(), dim=-1)[:, 1].double().numpy()


class _SampleController(nn.Module):
    """AdaFS's controller: an MLP from the sample's (B, F·D) field vectors to (B, P) field logits."""

    def __init__(self, inputs: int, fields: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(inputs, elementwise_affine=False)
        self.hidden, self.out = nn.Linear(inputs, hidden), nn.Linear(hidden, fields)
        for layer in (self.hidden, self.out):
            bound = 1 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
            nn.init.zeros_(layer.bias)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.norm(vectors.flatten(1)))))  # (B, P)


class AdaFS(_BiLevel):
    """AdaFS, soft selection (Lin et al., KDD 2022, §3.2 "controller" and §3.3 "optimization").

    A per-sample controller (an MLP on the sample's normalised field vectors) gives field weights
    ``w(x) = P · softmax(h(x) / τ)`` (P scored fields; the factor P keeps the mean weight 1) that multiply
    the field vectors. Same bi-level alternation as AutoField (model on train, controller on validation).
    The field score is the mean weight over the scored split (one extra forward sweep), the sample-wise
    selection averaged into a global ranking as ERASE does.

    Defaults: lr 1e-4 (controller, Adam), l2 1e-4, from scratch (model_lr 1e-3), hidden 64, τ_0 1.0
    annealed by 1e-3 per step to 0.1, 3 epochs.
    """

    name: ClassVar[str] = "adafs"
    min_temperature: ClassVar[float] = 0.1

    def __init__(self, model: FieldPathModel, *, lr: float = 1e-4, l2: float = 1e-4, epochs: int = 3,
                 temperature: float = 1.0, anneal: float = 1e-3, hidden: int = 64, from_scratch: bool = True,
                 task_weights: Sequence[float] | None = None, **options: Any) -> None:
        super().__init__(model, lr=lr, l2=l2, epochs=epochs, temperature=temperature, anneal=anneal,
                         from_scratch=from_scratch, task_weights=task_weights, **options)
        if hidden < 1:
            raise ConfigError(f"adafs hidden {hidden} must be 1 or more (controller width)")
        self.hidden = int(hidden)

    def build_controller(self, search: Search) -> nn.Module:
        inputs = self.model.num_fields * self.model.embedding_dim
        with torch.random.fork_rng(devices=[]):  # nn.Linear's default init draws from the global stream
            return _SampleController(inputs, len(search.positions), self.hidden, search.generator)

    def gates(self, controller: nn.Module, search: Search, vectors: torch.Tensor, tau: float) -> torch.Tensor:
        weights = torch.softmax(controller(vectors.detach()) / tau, dim=-1)  # (B, P)
        return weights * weights.shape[1]

    @torch.no_grad()
    def scores(self, controller: nn.Module, search: Search, split: EncodedSplit, batch_size: int) -> np.ndarray:
        total = torch.zeros(len(search.positions), dtype=torch.float64)
        for batch in split.batches(batch_size):
            total += torch.softmax(controller(search.model.field_vectors(batch)), dim=-1).double().sum(0)
            search.samples += len(batch) / 3  # a forward only: a third of a forward + backward
        return (total / len(split)).numpy()


class UMEC(LearnedSelection):
    """UMEC's input-feature selection (Shen et al., ICLR 2021, §3 resource-constrained formulation, §3.2 ADMM).

    Continuous field gates s (P,) multiply the field vectors; the budget constraint "at most ``budget``
    fields kept" (‖s‖_0 ≤ k, the resource of the input part) is enforced by ADMM with a split variable z
    and a scaled dual u: the gates and the copy's weights minimise ``L(W, s) + ρ/2 ‖s − z + u‖²`` by
    (proximal-style projected) SGD, s clipped to [0, 1]; every ``admm_every`` steps
    ``z ← Π_k(s + u)`` (keep the k largest entries, zero the rest: the projection onto the budget set)
    and ``u ← u + s − z``. The score is s at the end (fields outside the budget are pulled towards 0, the
    more useful ones resist more).

    Defaults: lr 1e-2 (gates, Adam), l2 1e-4, from scratch (model_lr 1e-3), ρ 1e-2, admm_every 10,
    budget ⌈P/2⌉, 3 epochs.
    """

    name: ClassVar[str] = "umec"

    def __init__(self, model: FieldPathModel, *, lr: float = 1e-2, l2: float = 1e-4, epochs: int = 3,
                 budget: int | None = None, rho: float = 1e-2, admm_every: int = 10, from_scratch: bool = True,
                 task_weights: Sequence[float] | None = None, **options: Any) -> None:
        super().__init__(model, lr=lr, l2=l2, epochs=epochs, from_scratch=from_scratch, task_weights=task_weights,
                         **options)
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                                   or not 1 <= budget <= model.num_fields):
            raise ConfigError(f"umec budget {budget!r} is outside the model's field count; use 1..{model.num_fields}")
        self.budget = budget
        self.rho = positive("umec", "rho", rho, "1e-2")
        if admm_every < 1:
            raise ConfigError(f"umec admm_every {admm_every} must be 1 or more (steps between ADMM updates)")
        self.admm_every = int(admm_every)

    def _search(self, search: Search, split: EncodedSplit, batch_size: int) -> np.ndarray:
        count = len(search.positions)
        budget = math.ceil(count / 2) if self.budget is None else self.budget
        if budget > count:
            raise ConfigError(f"umec budget {budget} is above the {count} scored fields; use 1..{count}")
        fit = self.train if self.train is not None else split
        gates = torch.ones(count, requires_grad=True)  # s
        optimizer = torch.optim.Adam([gates], lr=self.lr)
        split_var = gates.detach().clone()  # z
        dual = torch.zeros(count)  # u (scaled)
        step = 0
        for epoch in range(self.epochs):
            for batch in search.batches(fit, epoch):
                vectors = search.vectors(batch, train_weights=True)
                loss = search.loss(batch, vectors, gates.unsqueeze(0), train_weights=True)
                loss = loss + 0.5 * self.rho * (gates - split_var + dual).square().sum()
                optimizer.zero_grad(set_to_none=True)
                search.backward(loss)
                optimizer.step()
                with torch.no_grad():
                    gates.clamp_(0.0, 1.0)
                step += 1
                if step % self.admm_every == 0:
                    with torch.no_grad():
                        split_var = project_budget(gates.detach() + dual, budget)
                        dual += gates.detach() - split_var
        return gates.detach().double().numpy()


def project_budget(values: torch.Tensor, budget: int) -> torch.Tensor:
    """Euclidean projection of (P,) ``values`` onto {z ∈ [0, 1]^P : ‖z‖_0 ≤ budget}: the ``budget`` largest
    entries clipped to [0, 1], the rest 0."""
    out = torch.zeros_like(values)
    top = torch.topk(values, budget).indices
    out[top] = values[top].clamp(0.0, 1.0)
    return out
