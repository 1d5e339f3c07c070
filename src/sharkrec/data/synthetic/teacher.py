"""The hidden teacher: field layout, bounded Zipf sampling, dense counts, the teacher's tables,
bias calibration and the ground-truth importances (:class:`GroundTruth`, :class:`FieldTruth`)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sharkrec.data.synthetic.config import FieldRole, SyntheticConfig
from sharkrec.errors import ConfigError

DENSE_FIELD = "dense"

_STRONG_WEIGHT = (0.45, 0.8)
_WEAK_WEIGHT = (0.1, 0.2)
_DENSE_WEIGHT = (0.25, 0.45)
_CHUNK = 1 << 20


class _Stream(enum.IntEnum):
    """Independent random streams: ``default_rng([seed, stream, index])``."""

    ROLES = 1
    WEIGHTS = 2
    EFFECTS = 3
    VALUES = 4
    DENSE_PARAMS = 5
    DENSE = 6
    LABELS = 7
    SAMPLE = 8


def _rng(seed: int, stream: _Stream, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, int(stream), index])

# -- layout: roles, sizes, sources ---------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    roles: tuple[FieldRole, ...]
    cardinalities: tuple[int, ...]
    exponents: tuple[float, ...]
    source: tuple[int, ...]  # source field of a redundant field, else -1
    interacting: tuple[int, ...]
    dense_informative: tuple[int, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"C{i + 1}" for i in range(len(self.roles)))


def _layout(config: SyntheticConfig) -> _Layout:
    counts = config.role_counts()
    roles = [role for role in (FieldRole.STRONG, FieldRole.WEAK, FieldRole.NOISE, FieldRole.REDUNDANT)
             for _ in range(counts[role])]
    rng = _rng(config.seed, _Stream.ROLES)
    if config.shuffle_roles:
        roles = [roles[i] for i in rng.permutation(len(roles))]
    strong = [i for i, role in enumerate(roles) if role is FieldRole.STRONG]
    cardinalities = list(config.cardinalities or config.default_cardinalities())
    exponents = list(config.exponents())
    source = [-1] * len(roles)
    for k, i in enumerate(i for i, role in enumerate(roles) if role is FieldRole.REDUNDANT):
        src = strong[k % len(strong)]
        source[i] = src
        cardinalities[i] = min(cardinalities[i], cardinalities[src])
        exponents[i] = exponents[src]
    n_interacting = min(4, len(strong)) if config.num_interacting is None else config.num_interacting
    n_dense = round(config.num_dense * 4 / 13) if config.num_dense_informative is None else config.num_dense_informative
    dense_order = rng.permutation(config.num_dense) if config.shuffle_roles else np.arange(config.num_dense)
    return _Layout(
        roles=tuple(roles), cardinalities=tuple(cardinalities), exponents=tuple(exponents), source=tuple(source),
        interacting=tuple(strong[:n_interacting]),
        dense_informative=tuple(sorted(int(j) for j in dense_order[:n_dense])),
    )


def _zipf_cdf(cardinality: int, exponent: float) -> np.ndarray:
    """(K,) cumulative probabilities of ranks 0..K-1 under ``P(r) ∝ (r + 1) ** -s``; last entry exactly 1."""
    weights = np.arange(1, cardinality + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


def _draw_ranks(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    """(n,) int32 ranks drawn by inverse CDF (bounded, unlike ``np.random.zipf``)."""
    out = np.empty(n, dtype=np.int32)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        out[start:stop] = np.searchsorted(cdf, rng.random(stop - start), side="right")
    return out


def _coarsening(source_cardinality: int, cardinality: int) -> np.ndarray:
    """(K_src,) rank map of a redundant field: identity on the source's hottest values, tail folded."""
    ranks = np.arange(source_cardinality, dtype=np.int64)
    if cardinality >= source_cardinality:
        return ranks.astype(np.int32)
    head = cardinality // 2
    folded = np.where(ranks < head, ranks, head + (ranks - head) % (cardinality - head))
    return folded.astype(np.int32)


def _dense_params(config: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(config.seed, _Stream.DENSE_PARAMS)
    return rng.uniform(0.0, 2.5, config.num_dense), rng.uniform(0.7, 1.8, config.num_dense)


def _draw_dense(rng_of: Callable[[int], np.random.Generator], mu: np.ndarray, sigma: np.ndarray, n: int) -> np.ndarray:
    """(n, m) int32 zero-inflated log-normal counts ``floor(exp(mu + sigma z) - 1)`` clipped at 0."""
    counts = np.empty((n, len(mu)), dtype=np.int32)
    for j in range(len(mu)):
        rng = rng_of(j)
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            z = rng.standard_normal(stop - start, dtype=np.float32)
            value = np.floor(np.expm1(np.float32(mu[j]) + np.float32(sigma[j]) * z))
            counts[start:stop, j] = np.clip(value, 0, 2.0**31 - 256)
    return counts


def _log_counts(counts: np.ndarray) -> np.ndarray:
    return np.log1p(counts.astype(np.float32))


# -- the teacher ---------------------------------------------------------------------------------


@dataclass
class _Teacher:
    """Tables of the hidden teacher; ``logits`` evaluates it on ranks and log-counts."""

    bias: float
    weights: dict[int, float]  # field -> w_f
    main: dict[int, np.ndarray]  # field -> (K,) float64, w_f * e_f
    hidden: dict[int, np.ndarray]  # field -> (K, d) float64, λ-free, centred
    interaction_weight: float
    dense_coef: np.ndarray  # (m,)
    dense_mean: np.ndarray  # (m,)
    dense_std: np.ndarray  # (m,)

    def dense_term(self, log_counts: np.ndarray) -> np.ndarray:
        if not np.any(self.dense_coef):
            return np.zeros(len(log_counts))
        return ((log_counts - self.dense_mean) / self.dense_std) @ self.dense_coef

    def interaction(self, vectors: Sequence[np.ndarray]) -> np.ndarray:
        """λ Σ_{f<g} <u_f, u_g> for (n, d) vectors, via (|Σ u|² − Σ |u|²) / 2."""
        total = np.sum(vectors, axis=0)
        pairs = (np.einsum("nd,nd->n", total, total) - sum(np.einsum("nd,nd->n", u, u) for u in vectors)) / 2
        return self.interaction_weight * pairs

    def logits(self, ranks: Sequence[np.ndarray], log_counts: np.ndarray) -> np.ndarray:
        """(n,) float64 teacher logits for per-field (n,) ranks and (n, m) log-counts."""
        n = len(log_counts)
        out = np.full(n, self.bias)
        for f, table in self.main.items():
            out += table[ranks[f]]
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            if len(self.hidden) > 1:
                out[start:stop] += self.interaction([u[ranks[f][start:stop]] for f, u in self.hidden.items()])
            out[start:stop] += self.dense_term(log_counts[start:stop])
        return out


def _standardised(values: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Centre and scale ``values`` ((K,) or (K, d)) to mean 0, variance 1 under ``probs``."""
    weights = probs.reshape(-1, *([1] * (values.ndim - 1)))
    mean = np.sum(weights * values, axis=0)
    centred = values - mean
    std = np.sqrt(np.sum(weights * centred**2, axis=0))
    return centred / np.where(std > 0, std, 1.0)


def _build_teacher(config: SyntheticConfig, layout: _Layout, cdfs: list[np.ndarray]) -> _Teacher:
    weight_rng = _rng(config.seed, _Stream.WEIGHTS)
    scale = config.signal_scale
    weights: dict[int, float] = {}
    main: dict[int, np.ndarray] = {}
    hidden: dict[int, np.ndarray] = {}
    for f, role in enumerate(layout.roles):
        low, high = _STRONG_WEIGHT if role is FieldRole.STRONG else _WEAK_WEIGHT
        weight = weight_rng.uniform(low, high) * scale  # drawn for every field so streams stay aligned
        if role not in (FieldRole.STRONG, FieldRole.WEAK):
            continue
        weights[f] = weight
        cdf = cdfs[f]
        probs = np.diff(cdf, prepend=0.0)
        head = np.concatenate([[True], cdf[:-1] < config.head_mass])
        discount = np.where(head, 1.0, config.tail_effect_scale)
        rng = _rng(config.seed, _Stream.EFFECTS, f)
        main[f] = weight * _standardised(rng.standard_normal(len(cdf)) * discount, probs)
        if f in layout.interacting:
            vectors = rng.standard_normal((len(cdf), config.teacher_dim)) * discount[:, None]
            # unit variance per dimension / sqrt(d): one pair <u_f, u_g> has variance 1
            hidden[f] = _standardised(vectors, probs) * config.teacher_dim**-0.25
    dense_rng = _rng(config.seed, _Stream.WEIGHTS, 1)
    signs = dense_rng.choice([-1.0, 1.0], config.num_dense)
    magnitudes = dense_rng.uniform(*_DENSE_WEIGHT, config.num_dense)
    coef = np.zeros(config.num_dense)
    informative = list(layout.dense_informative)
    coef[informative] = (signs * magnitudes * scale)[informative]
    return _Teacher(
        bias=0.0, weights=weights, main=main, hidden=hidden, interaction_weight=config.interaction_scale * scale,
        dense_coef=coef, dense_mean=np.zeros(config.num_dense), dense_std=np.ones(config.num_dense),
    )


def _calibrate_bias(logits: np.ndarray, target: float) -> float:
    """The bias b with mean(sigmoid(b + logits)) = target, by bisection."""
    low, high = -60.0, 60.0
    for _ in range(32):
        mid = (low + high) / 2
        if np.mean(_sigmoid(mid + logits)) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


# -- ground truth --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldTruth:
    """What the teacher does with one field.

    ``weight`` is the teacher's weight on the field's unit-variance main effect (the norm of the
    coefficient vector for ``dense``; 0 for noise and redundant fields). ``importance`` is the
    expected increase of the teacher's log-loss (nats per sample) when the field is resampled from
    its marginal, ``importance_se`` its Monte-Carlo standard error. A redundant field reports its
    source's Zipf exponent (its own law is the source's, coarsened).
    """

    name: str
    role: FieldRole
    weight: float
    importance: float
    importance_se: float
    cardinality: int
    zipf_exponent: float | None
    redundant_of: str | None = None
    interacts_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class GroundTruth:
    """Per-field truth (``C1..Cn`` then ``dense``) and the teacher's own quality on the test split."""

    fields: tuple[FieldTruth, ...]
    bias: float
    interaction_weight: float
    dense_informative: tuple[str, ...]
    positive_rate: float
    teacher_test_auc: float
    teacher_test_logloss: float
    sample_size: int

    def field(self, name: str) -> FieldTruth:
        for truth in self.fields:
            if truth.name == name:
                return truth
        raise ConfigError(f"field {name!r} is not in the synthetic data; known: {', '.join(self.importance)}")

    @property
    def importance(self) -> dict[str, float]:
        return {f.name: f.importance for f in self.fields}

    @property
    def order(self) -> tuple[str, ...]:
        """Field names by descending importance; ties keep field order."""
        ranked = sorted(range(len(self.fields)), key=lambda i: -self.fields[i].importance)
        return tuple(self.fields[i].name for i in ranked)

    @property
    def roles(self) -> dict[str, FieldRole]:
        return {f.name: f.role for f in self.fields}

    def names_with_role(self, role: FieldRole | str) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.role is FieldRole(role))

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["fields"] = [{**asdict(f), "role": f.role.value, "interacts_with": list(f.interacts_with)}
                             for f in self.fields]
        payload["dense_informative"] = list(self.dense_informative)
        payload["order"] = list(self.order)
        return payload


def _calibrate_and_score(teacher: _Teacher, config: SyntheticConfig, layout: _Layout,
                         cdfs: list[np.ndarray]) -> dict[str, tuple[float, float]]:
    """Fit the teacher's dense standardisation and bias on fresh rows, then score its inputs.

    Returns (mean, standard error) of ``KL(Bern(p(x)) || Bern(p(x with x_f := x'_f)))`` per field
    the teacher reads, ``x'_f`` an independent draw from the field's marginal.
    """
    n = config.ground_truth_sample
    ranks: list[np.ndarray] = []
    fresh: list[np.ndarray] = []
    for f in range(len(layout.roles)):
        if f in teacher.main:
            ranks.append(_draw_ranks(_rng(config.seed, _Stream.SAMPLE, 2 * f + 10), cdfs[f], n))
            fresh.append(_draw_ranks(_rng(config.seed, _Stream.SAMPLE, 2 * f + 11), cdfs[f], n))
        else:
            ranks.append(np.zeros(0, dtype=np.int32))
            fresh.append(ranks[-1])
    mu, sigma = _dense_params(config)
    log_counts = _log_counts(_draw_dense(lambda j: _rng(config.seed, _Stream.SAMPLE, 2 * j + 1_000_000), mu, sigma, n))
    fresh_log_counts = _log_counts(
        _draw_dense(lambda j: _rng(config.seed, _Stream.SAMPLE, 2 * j + 1_000_001), mu, sigma, n)
    )
    if config.num_dense:
        teacher.dense_mean = log_counts.mean(axis=0).astype(np.float64)
        teacher.dense_std = np.maximum(log_counts.std(axis=0).astype(np.float64), 1e-6)
    logits = teacher.logits(ranks, log_counts)
    teacher.bias = _calibrate_bias(logits, config.base_ctr)
    logits += teacher.bias

    vectors = {f: u[ranks[f]] for f, u in teacher.hidden.items()}
    total = np.sum(list(vectors.values()), axis=0) if vectors else None

    def kl_stats(changed: np.ndarray) -> tuple[float, float]:
        p_log, q_log = -np.logaddexp(0.0, -logits), -np.logaddexp(0.0, -changed)
        p_log1m, q_log1m = -np.logaddexp(0.0, logits), -np.logaddexp(0.0, changed)
        p = np.exp(p_log)
        kl = p * (p_log - q_log) + (1 - p) * (p_log1m - q_log1m)
        return float(kl.mean()), float(kl.std() / np.sqrt(n))

    result: dict[str, tuple[float, float]] = {}
    for f, table in teacher.main.items():
        changed = logits - table[ranks[f]] + table[fresh[f]]
        if f in vectors and total is not None:
            # <u'_f − u_f, Σ_{g≠f} u_g>
            others = total - vectors[f]
            delta = teacher.hidden[f][fresh[f]] - vectors[f]
            changed += teacher.interaction_weight * np.einsum("nd,nd->n", delta, others)
        result[layout.names[f]] = kl_stats(changed)
    if config.num_dense:
        changed = logits - teacher.dense_term(log_counts) + teacher.dense_term(fresh_log_counts)
        result[DENSE_FIELD] = kl_stats(changed)
    return result
