"""Built-in synthetic click logs with a known teacher: quick-start data, test data, ground truth.

A sample has ``num_sparse`` categorical fields ``C1..Cn``, ``num_dense`` count features
``I1..Im`` and one label ``click``. Fields are independent; each draws its value from a bounded
Zipf law ``P(rank r) ∝ (r + 1) ** -s`` (r = 0 is the hottest value) by inverse CDF, so value
frequencies are heavy-tailed like real logs. Every sparse field has a role:

- ``strong`` / ``weak``: the teacher reads the field with a large / small weight;
- ``noise``: the teacher ignores the field;
- ``redundant``: a deterministic function of a strong field (a bijection when it has as many
  values, otherwise a coarsening that keeps the source's hot values and folds its tail), so it
  carries the same (or nearly the same) information although the teacher never reads it.

The hidden teacher (all terms centred and scaled under the data distribution)::

    logit(x) = bias + Σ_f w_f · e_f[x_f]                         main effects, (K_f,) per field
                    + λ · Σ_{f<g interacting} <u_f[x_f], u_g[x_g]> dot-product interactions, (K_f, d)
                    + Σ_j v_j · (log1p(I_j) − mean_j) / std_j      dense linear term
    click ~ Bernoulli(sigmoid(logit))

``e_f`` has unit variance under the field's own Zipf law; values outside the ``head_mass`` most
probable share of the field get effects ``tail_effect_scale`` times smaller, so the signal is
carried mostly by frequent values (a model can learn it) while rare values still matter a little.
``bias`` is calibrated so the positive rate is ``base_ctr``.

Ground truth (:class:`GroundTruth`): the importance of a field is the exact expected increase of
the teacher's log-loss when the field's value is replaced by an independent draw from its
marginal — with labels integrated out this is ``E_x E_x' KL(Bern(p(x)) || Bern(p(x with x_f := x'_f)))``
(nats per sample), estimated on ``ground_truth_sample`` fresh rows with a Monte-Carlo standard
error. It is >= 0, exactly 0 for noise and redundant fields (the teacher reads the original of a
redundant field; a trained model may use either copy), and it orders fields by how much the
teacher's predictions depend on them. The dense features count as one field ``dense`` (the DLRM
bottom MLP turns them into one vector) and are resampled together.

Dense features are non-negative, zero-inflated log-normal counts; the prepared data holds
``log1p(count)``, which is what the Criteo reader's signed ``log1p`` gives for such counts.
Everything is vectorised numpy and deterministic for a seed; each part (roles, effects, the values
of each field, dense features, labels, the ground-truth sample) has its own random stream.
"""

from __future__ import annotations

import enum
import gzip
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from sharkrec.data.dataset import EncodedSplit, PreparedData, SparseColumn
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.data.vocab import Vocabulary
from sharkrec.errors import ConfigError
from sharkrec.io import atomic_path

__all__ = [
    "FieldRole",
    "FieldTruth",
    "GroundTruth",
    "RawSample",
    "SyntheticConfig",
    "SyntheticData",
    "generate",
    "parse_synthetic_spec",
    "simulate",
    "write_criteo_tsv",
]

LABEL_NAME = "click"
DENSE_FIELD = "dense"

# Criteo Kaggle cardinalities (as counted by facebookresearch/dlrm), the default spread of sizes
_CRITEO_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
# default role shares for 26 fields: 6 strong, 8 weak, 4 redundant, the rest (8) noise
_ROLE_SHARES = {"num_strong": 6 / 26, "num_weak": 8 / 26, "num_redundant": 4 / 26}
_STRONG_WEIGHT = (0.45, 0.8)
_WEAK_WEIGHT = (0.1, 0.2)
_DENSE_WEIGHT = (0.25, 0.45)
_CHUNK = 1 << 20


class FieldRole(str, enum.Enum):
    """What a field is to the hidden teacher."""

    STRONG = "strong"
    WEAK = "weak"
    NOISE = "noise"
    REDUNDANT = "redundant"
    DENSE = "dense"


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


@dataclass(frozen=True)
class SyntheticConfig:
    """How to generate a synthetic click log; ``None`` means "derive from the other values".

    Attributes:
        rows: samples in all (split by row order into train / valid / test by ``split``).
        num_sparse, num_dense: fields ``C1..Cn`` and dense features ``I1..Im``.
        cardinalities: values each sparse field can take; default: Criteo's sizes capped at
            ``min(max_cardinality, max(100, rows // 4))``. A redundant field gets at most its source's.
        max_cardinality: upper bound on any cardinality.
        zipf_exponent: exponent ``s`` of the value-frequency law, one for all fields or one per field.
        num_strong, num_weak, num_noise, num_redundant: field roles; default 6/8/8/4 out of 26
            (same shares for other sizes, noise takes the rest).
        shuffle_roles: place roles at seeded random positions (else strong, weak, noise, redundant).
        num_dense_informative: dense features the teacher reads (default ``round(num_dense * 4 / 13)``).
        num_interacting: strong fields with pairwise hidden-vector interactions (default ``min(4, strong)``).
        teacher_dim: dimension ``d`` of the teacher's hidden vectors.
        signal_scale: multiplies every teacher weight (0 makes labels independent of the features).
        interaction_scale: ``λ``, the logit std of one interacting pair (before ``signal_scale``).
        tail_effect_scale: effect size of tail values relative to head values.
        head_mass: probability mass of a field's hottest values that count as its head.
        base_ctr: positive rate the teacher's bias is calibrated to.
        seed: seed of every random stream.
        split: fractions of train / valid / test, by row order.
        ground_truth_sample: fresh rows used to estimate importances and calibrate the bias.
    """

    rows: int = 200_000
    num_sparse: int = 26
    num_dense: int = 13
    cardinalities: tuple[int, ...] | None = None
    max_cardinality: int = 1_000_000
    zipf_exponent: float | tuple[float, ...] = 1.2
    num_strong: int | None = None
    num_weak: int | None = None
    num_noise: int | None = None
    num_redundant: int | None = None
    shuffle_roles: bool = True
    num_dense_informative: int | None = None
    num_interacting: int | None = None
    teacher_dim: int = 4
    signal_scale: float = 1.0
    interaction_scale: float = 0.3
    tail_effect_scale: float = 0.5
    head_mass: float = 0.8
    base_ctr: float = 0.22
    seed: int = 0
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    ground_truth_sample: int = 200_000

    def __post_init__(self) -> None:
        for name in ("cardinalities", "split", "zipf_exponent"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _check_int("rows", self.rows, 100, 2**31 - 1)
        _check_int("num_sparse", self.num_sparse, 1, 10_000)
        _check_int("num_dense", self.num_dense, 0, 10_000)
        _check_int("max_cardinality", self.max_cardinality, 2, 100_000_000)
        _check_int("teacher_dim", self.teacher_dim, 1, 1024)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("ground_truth_sample", self.ground_truth_sample, 1000, 10_000_000)
        if not isinstance(self.shuffle_roles, bool):
            raise ConfigError(f"synthetic shuffle_roles={self.shuffle_roles!r} is not a boolean; use true or false")
        _check_float("signal_scale", self.signal_scale, 0.0, 10.0)
        _check_float("interaction_scale", self.interaction_scale, 0.0, 10.0)
        _check_float("tail_effect_scale", self.tail_effect_scale, 0.0, 10.0)
        _check_float("head_mass", self.head_mass, 0.01, 1.0)
        _check_float("base_ctr", self.base_ctr, 0.001, 0.999)
        if self.cardinalities is not None:
            if not isinstance(self.cardinalities, tuple) or len(self.cardinalities) != self.num_sparse:
                raise ConfigError(
                    f"synthetic cardinalities has {_length(self.cardinalities)} entries but"
                    f" num_sparse={self.num_sparse}; give one cardinality per sparse field or leave it unset"
                )
            for i, value in enumerate(self.cardinalities):
                _check_int(f"cardinalities[{i}]", value, 2, self.max_cardinality)
        exponents = self.zipf_exponent if isinstance(self.zipf_exponent, tuple) else (self.zipf_exponent,)
        if isinstance(self.zipf_exponent, tuple) and len(exponents) != self.num_sparse:
            raise ConfigError(
                f"synthetic zipf_exponent has {len(exponents)} entries but num_sparse={self.num_sparse};"
                " give one exponent for all fields or one per sparse field"
            )
        for value in exponents:
            _check_float("zipf_exponent", value, 0.0, 5.0)
        if not isinstance(self.split, tuple) or len(self.split) != 3:
            raise ConfigError(
                f"synthetic split={self.split!r} is not three fractions; give train, valid, test, e.g. 0.8:0.1:0.1"
            )
        for value in self.split:
            _check_float("split", value, 1e-6, 1.0)
        if abs(sum(self.split) - 1.0) > 1e-6:
            raise ConfigError(
                f"synthetic split={self.split!r} sums to {sum(self.split):.6g}; make the fractions sum to 1"
            )
        if min(self.split_sizes()) < 1:
            raise ConfigError(
                f"synthetic rows={self.rows} leaves an empty split with split={self.split}; use more rows"
            )
        for name in sorted(_OPTIONAL_KEYS - {"cardinalities"}):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, 0, 10_000)
        counts = self.role_counts()  # validates the role counts
        if self.num_dense_informative is not None and self.num_dense_informative > self.num_dense:
            raise ConfigError(
                f"synthetic num_dense_informative={self.num_dense_informative} exceeds num_dense={self.num_dense};"
                " lower it or add dense features"
            )
        if self.num_interacting is not None and self.num_interacting > counts[FieldRole.STRONG]:
            raise ConfigError(
                f"synthetic num_interacting={self.num_interacting} exceeds the {counts[FieldRole.STRONG]}"
                " strong fields; lower it or raise num_strong"
            )

    # -- derived values -------------------------------------------------------------------------

    def role_counts(self) -> dict[FieldRole, int]:
        """Strong / weak / noise / redundant counts, defaults filled in, checked to sum to num_sparse."""
        n = self.num_sparse
        given = {"num_strong": self.num_strong, "num_weak": self.num_weak, "num_redundant": self.num_redundant}
        fixed = sum(v for v in given.values() if v is not None) + (self.num_noise or 0)
        free = max(n - fixed, 0)
        resolved: dict[str, int] = {}
        for name, value in given.items():
            if value is None:
                share = round(n * _ROLE_SHARES[name])
                if name == "num_strong":
                    share = max(share, 1)
                value = min(share, free)
                free -= value
            resolved[name] = value
        taken = sum(resolved.values())
        noise = n - taken if self.num_noise is None else self.num_noise
        if noise < 0 or taken + noise != n:
            raise ConfigError(
                f"synthetic roles {resolved['num_strong']} strong + {resolved['num_weak']} weak + {noise} noise"
                f" + {resolved['num_redundant']} redundant do not add up to num_sparse={n}; make them sum to it"
            )
        if resolved["num_redundant"] and not resolved["num_strong"]:
            raise ConfigError(
                "synthetic num_redundant > 0 needs at least one strong field to copy; set num_strong >= 1"
            )
        return {
            FieldRole.STRONG: resolved["num_strong"],
            FieldRole.WEAK: resolved["num_weak"],
            FieldRole.NOISE: noise,
            FieldRole.REDUNDANT: resolved["num_redundant"],
        }

    def split_sizes(self) -> tuple[int, int, int]:
        """Rows of train, valid and test (first, next, last by row order)."""
        n_train = round(self.rows * self.split[0])
        n_valid = round(self.rows * self.split[1])
        return n_train, n_valid, self.rows - n_train - n_valid

    def default_cardinalities(self) -> tuple[int, ...]:
        """Criteo's field sizes in order (cycled), capped relative to ``rows`` and ``max_cardinality``."""
        cap = min(self.max_cardinality, max(100, self.rows // 4))
        pattern = _CRITEO_CARDINALITIES
        return tuple(min(pattern[i % len(pattern)], cap) for i in range(self.num_sparse))

    def exponents(self) -> tuple[float, ...]:
        if isinstance(self.zipf_exponent, tuple):
            return tuple(float(s) for s in self.zipf_exponent)
        return (float(self.zipf_exponent),) * self.num_sparse

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> SyntheticConfig:
        """Build from a mapping of field names to values (JSON types or ``key=value`` strings)."""
        if not isinstance(payload, dict):
            raise ConfigError("a synthetic config must be a JSON object of SyntheticConfig fields")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(payload) - set(allowed))
        if unknown:
            raise ConfigError(f"unknown synthetic config keys {unknown}; allowed keys: {', '.join(allowed)}")
        return cls(**{key: _coerce(key, value) for key, value in payload.items()})

    # -- presets --------------------------------------------------------------------------------

    @classmethod
    def small(cls, **overrides: Any) -> SyntheticConfig:
        """20k rows, 8 sparse fields in fixed roles, 3 dense features: for fast unit tests.

        C1, C2 strong (C1 and C2 interact); C3, C4 weak; C5, C6, C7 noise; C8 redundant (a
        coarsening of C1 to 10 values); I1 informative, I2 and I3 not.
        """
        base = cls(
            rows=20_000, num_sparse=8, num_dense=3, cardinalities=(20, 300, 50, 1000, 10, 200, 3000, 10),
            num_strong=2, num_weak=2, num_noise=3, num_redundant=1, shuffle_roles=False,
            num_dense_informative=1, num_interacting=2, ground_truth_sample=50_000,
        )
        return replace(base, **overrides)

    @classmethod
    def stress(cls, **overrides: Any) -> SyntheticConfig:
        """The quantization stress regime: 4M rows in 26 Criteo-sized fields (up to 1M values).

        A heavier tail (s = 1.1), a stronger and higher-dimensional teacher and a weaker tail
        discount make fine differences between many frequent rows matter, and hot rows take
        hundreds of thousands of updates, so uniformly low precision visibly costs AUC here while
        small public datasets hide it.
        """
        base = cls(
            rows=4_000_000, zipf_exponent=1.1, signal_scale=1.5, teacher_dim=8, interaction_scale=0.5,
            tail_effect_scale=0.8, max_cardinality=1_000_000,
        )
        return replace(base, **overrides)


def _length(value: Any) -> int | str:
    try:
        return len(value)
    except TypeError:
        return "no list of"


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"synthetic {name}={value!r} is not an integer; give a whole number in [{low}, {high}]")
    if not low <= value <= high:
        raise ConfigError(f"synthetic {name}={value} is out of range; use a value in [{low}, {high}]")


def _check_float(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"synthetic {name}={value!r} is not a number; give a number in [{low}, {high}]")
    if not low <= float(value) <= high:
        raise ConfigError(f"synthetic {name}={value} is out of range; use a value in [{low}, {high}]")


# -- the spec the command line passes ------------------------------------------------------------

_OPTIONAL_KEYS = {"num_strong", "num_weak", "num_noise", "num_redundant", "num_dense_informative", "num_interacting",
                  "cardinalities"}
_INT_KEYS = {"rows", "num_sparse", "num_dense", "max_cardinality", "teacher_dim", "seed", "ground_truth_sample"} | (
    _OPTIONAL_KEYS - {"cardinalities"}
)
_PRESETS: dict[str, Callable[..., SyntheticConfig]] = {
    "default": SyntheticConfig, "small": SyntheticConfig.small, "stress": SyntheticConfig.stress,
}


def parse_synthetic_spec(text: str) -> SyntheticConfig:
    """The config named by ``--data`` for ``--format synthetic``.

    ``text`` is empty or ``default``; a preset (``small``, ``stress``) optionally followed by
    overrides (``small,seed=3``); ``key=value`` pairs separated by commas, lists separated by ``:``
    (``rows=100000,seed=3,split=0.7:0.15:0.15``); or the path of a JSON file of config fields.
    """
    text = (text or "").strip()
    if not text:
        return SyntheticConfig()
    path = Path(text)
    if text.endswith(".json") or ("=" not in text and path.is_file()):
        if not path.is_file():
            raise ConfigError(
                f"synthetic spec file {text!r} does not exist; pass an existing JSON file or key=value pairs"
            )
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"synthetic spec file {text!r} is not valid JSON ({exc.msg} at line {exc.lineno}); fix it"
            ) from None
        return SyntheticConfig.from_dict(payload)
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    preset: Callable[..., SyntheticConfig] = SyntheticConfig
    if "=" not in tokens[0]:
        name = tokens.pop(0).lower()
        if name not in _PRESETS:
            raise ConfigError(
                f"synthetic spec {text!r} is not a preset ({', '.join(_PRESETS)}), a JSON file or key=value pairs;"
                " use e.g. rows=100000,seed=3"
            )
        preset = _PRESETS[name]
    overrides: dict[str, Any] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            raise ConfigError(f"synthetic spec item {token!r} is not key=value; write e.g. rows=100000")
        overrides[key.strip()] = value.strip()
    allowed = [f.name for f in fields(SyntheticConfig)]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown synthetic config keys {unknown}; allowed keys: {', '.join(allowed)}")
    return preset(**{key: _coerce(key, value) for key, value in overrides.items()})


def _coerce(key: str, value: Any) -> Any:
    """Turn a JSON value or a ``key=value`` string into the field's type (validation comes later)."""
    integer = key in _INT_KEYS or key == "cardinalities"
    if isinstance(value, list):
        return tuple(_coerce_scalar(key, v, integer) if isinstance(v, str) else v for v in value)
    if not isinstance(value, str):
        return int(value) if integer and isinstance(value, float) and value.is_integer() else value
    text = value.strip()
    if key in _OPTIONAL_KEYS and text.lower() in ("none", "null", ""):
        return None
    if key == "shuffle_roles":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"synthetic shuffle_roles={text!r} is not a boolean; use true or false")
    if key in ("cardinalities", "split") or (key == "zipf_exponent" and ":" in text):
        return tuple(_coerce_scalar(key, part, integer) for part in text.split(":"))
    return _coerce_scalar(key, text, integer)


def _coerce_scalar(key: str, text: str, integer: bool) -> int | float:
    try:
        number = float(text.replace("_", ""))
    except ValueError:
        raise ConfigError(f"synthetic {key}={text!r} is not a number; give a number, e.g. {key}=3") from None
    if integer:
        if not number.is_integer():
            raise ConfigError(f"synthetic {key}={text!r} is not a whole number; give an integer")
        return int(number)
    return number


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


# -- simulation and encoding ---------------------------------------------------------------------


@dataclass
class RawSample:
    """The generated log before encoding, rows in order.

    ``ranks`` one (N,) int32 per sparse field (0 = the field's most probable value);
    ``dense_counts`` (N, m) int32; ``labels`` (N,) int8; ``logits`` (N,) float32 teacher logits.
    """

    config: SyntheticConfig
    ranks: list[np.ndarray] = field(repr=False)
    dense_counts: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    logits: np.ndarray = field(repr=False)
    ground_truth: GroundTruth = field(repr=False)


@dataclass
class SyntheticData:
    """Prepared synthetic data plus what is known about it.

    ``teacher_logits`` maps a split name to its (n,) float32 teacher logits; ``row_ranks`` maps a
    sparse field to the (num_rows,) Zipf rank behind each vocabulary row (row 0, OOV: -1), and
    ``row_effects`` holds each row's main teacher effect ``w_f · e_f`` (OOV and untaught fields: 0).
    """

    config: SyntheticConfig
    data: PreparedData = field(repr=False)
    ground_truth: GroundTruth = field(repr=False)
    teacher_logits: dict[str, np.ndarray] = field(repr=False)
    row_ranks: dict[str, np.ndarray] = field(repr=False)
    row_effects: dict[str, np.ndarray] = field(repr=False)


def simulate(config: SyntheticConfig | None = None) -> RawSample:
    """Draw the raw log (ranks, counts, labels) and the teacher's ground truth for ``config``."""
    return _simulate(config or SyntheticConfig())[0]


def _simulate(config: SyntheticConfig) -> tuple[RawSample, _Teacher, _Layout]:
    layout = _layout(config)
    cdfs = [_zipf_cdf(k, s) for k, s in zip(layout.cardinalities, layout.exponents, strict=True)]
    teacher = _build_teacher(config, layout, cdfs)
    importance = _calibrate_and_score(teacher, config, layout, cdfs)

    n = config.rows
    ranks = [_draw_ranks(_rng(config.seed, _Stream.VALUES, f), cdfs[f], n) if role is not FieldRole.REDUNDANT
             else np.empty(0, dtype=np.int32) for f, role in enumerate(layout.roles)]
    for f, src in enumerate(layout.source):
        if src >= 0:
            ranks[f] = _coarsening(layout.cardinalities[src], layout.cardinalities[f])[ranks[src]]
    mu, sigma = _dense_params(config)
    dense_counts = _draw_dense(lambda j: _rng(config.seed, _Stream.DENSE, j), mu, sigma, n)
    logits = np.empty(n, dtype=np.float32)
    labels = np.empty(n, dtype=np.int8)
    label_rng = _rng(config.seed, _Stream.LABELS)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        chunk = teacher.logits([r[start:stop] for r in ranks], _log_counts(dense_counts[start:stop]))
        logits[start:stop] = chunk
        labels[start:stop] = label_rng.random(stop - start) < _sigmoid(chunk)

    n_train, n_valid, _ = config.split_sizes()
    test = slice(n_train + n_valid, n)
    auc, logloss = _auc(logits[test], labels[test]), _logloss(logits[test], labels[test])
    names = layout.names
    truths = []
    for f, role in enumerate(layout.roles):
        mean, se = importance.get(names[f], (0.0, 0.0))
        truths.append(FieldTruth(
            name=names[f], role=role, weight=float(teacher.weights.get(f, 0.0)),
            importance=mean, importance_se=se, cardinality=layout.cardinalities[f],
            zipf_exponent=layout.exponents[f],
            redundant_of=names[layout.source[f]] if layout.source[f] >= 0 else None,
            interacts_with=tuple(names[g] for g in layout.interacting if g != f) if f in layout.interacting else (),
        ))
    if config.num_dense:
        mean, se = importance[DENSE_FIELD]
        truths.append(FieldTruth(
            name=DENSE_FIELD, role=FieldRole.DENSE, weight=float(np.linalg.norm(teacher.dense_coef)),
            importance=mean, importance_se=se, cardinality=0, zipf_exponent=None,
        ))
    truth = GroundTruth(
        fields=tuple(truths), bias=teacher.bias, interaction_weight=teacher.interaction_weight,
        dense_informative=tuple(f"I{j + 1}" for j in layout.dense_informative),
        positive_rate=float(labels.mean()), teacher_test_auc=auc, teacher_test_logloss=logloss,
        sample_size=config.ground_truth_sample,
    )
    return RawSample(config, ranks, dense_counts, labels, logits, truth), teacher, layout


def generate(config: SyntheticConfig | None = None) -> SyntheticData:
    """Generate, split by row order, and encode with train-split vocabularies (hottest row first)."""
    config = config or SyntheticConfig()
    raw, teacher, layout = _simulate(config)
    n_train, n_valid, _ = config.split_sizes()
    bounds = {"train": slice(0, n_train), "valid": slice(n_train, n_train + n_valid),
              "test": slice(n_train + n_valid, config.rows)}
    train_labels = raw.labels[bounds["train"]].astype(np.float64)

    vocabularies: dict[str, Vocabulary] = {}
    row_of_rank: list[np.ndarray] = []
    row_ranks: dict[str, np.ndarray] = {}
    row_effects: dict[str, np.ndarray] = {}
    for f, name in enumerate(layout.names):
        train_ranks = raw.ranks[f][bounds["train"]]
        counts = np.bincount(train_ranks, minlength=layout.cardinalities[f])
        positives = np.rint(np.bincount(train_ranks, weights=train_labels, minlength=len(counts))).astype(np.int64)
        seen = np.flatnonzero(counts)
        hottest = seen[np.argsort(-counts[seen], kind="stable")]  # ties by rank
        lookup = np.zeros(len(counts), dtype=np.int64)
        lookup[hottest] = np.arange(1, len(hottest) + 1)
        row_of_rank.append(lookup)
        vocabularies[name] = Vocabulary.identity(
            name, np.concatenate([[0], counts[hottest]]), np.concatenate([[0], positives[hottest]])
        )
        row_ranks[name] = np.concatenate([[-1], hottest]).astype(np.int64)
        effect = teacher.main.get(f)
        row_effects[name] = np.zeros(len(hottest) + 1) if effect is None else np.concatenate([[0.0], effect[hottest]])

    log_counts = _log_counts(raw.dense_counts)
    del raw.dense_counts
    splits: dict[str, EncodedSplit] = {}
    for split, rows in bounds.items():
        ids = np.empty((len(row_of_rank), rows.stop - rows.start), dtype=np.int64)
        for f, lookup in enumerate(row_of_rank):
            np.take(lookup, raw.ranks[f][rows], out=ids[f])
        columns = [SparseColumn(ids[f]) for f in range(len(ids))]
        splits[split] = EncodedSplit(log_counts[rows], columns, raw.labels[rows])
        del ids
    del log_counts

    schema = Schema(
        fields=(
            FieldSpec(LABEL_NAME, FieldKind.LABEL),
            *(FieldSpec(f"I{j + 1}", FieldKind.DENSE) for j in range(config.num_dense)),
            *(FieldSpec(name, FieldKind.SPARSE) for name in layout.names),
        ),
        name="synthetic",
    )
    report = {
        "format": "synthetic",
        "config": config.to_dict(),
        "rows": {split: len(s) for split, s in splits.items()},
        "positive_rate": {split: float(raw.labels[rows].mean()) for split, rows in bounds.items()},
        "ground_truth": raw.ground_truth.to_dict(),
    }
    prepared = PreparedData(schema, vocabularies, splits["train"], splits["valid"], splits["test"], report)
    return SyntheticData(
        config=config, data=prepared, ground_truth=raw.ground_truth,
        teacher_logits={split: raw.logits[rows].copy() for split, rows in bounds.items()},
        row_ranks=row_ranks, row_effects=row_effects,
    )


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve with tied scores counted half."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.repeat(first + (counts + 1) / 2, counts)
    return float((ranks[labels[order] == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _logloss(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits.astype(np.float64)
    return float(np.mean(np.where(labels == 1, np.logaddexp(0.0, -z), np.logaddexp(0.0, z))))


# -- raw Criteo TSV ------------------------------------------------------------------------------

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _hash32(values: np.ndarray, field_index: int) -> np.ndarray:
    """A bijection of uint32 (per field): distinct ranks give distinct 8-hex-digit ids."""
    mask = np.uint64(0xFFFFFFFF)
    x = (values.astype(np.uint64) ^ np.uint64((0x9E3779B9 * (field_index + 1)) & 0xFFFFFFFF)) & mask
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & mask
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & mask
    x ^= x >> np.uint64(16)
    return x


def _hex8(values: np.ndarray) -> np.ndarray:
    """(n, 8) ASCII bytes of ``values`` as lower-case hex."""
    shifts = np.arange(28, -1, -4, dtype=np.uint64)
    return _HEX[((values[:, None] >> shifts) & np.uint64(15)).astype(np.intp)]


def _decimal(values: np.ndarray, width: int) -> np.ndarray:
    """(n, width) ASCII digits of non-negative ``values``, right-aligned, leading positions NUL."""
    values = values.astype(np.int64)
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits = (values[:, None] // powers) % 10 + ord("0")
    digits[(values[:, None] < powers) & (powers > 1)] = 0
    return digits.astype(np.uint8)


def _tsv_chunk(label: np.ndarray, counts: np.ndarray, hashes: Sequence[np.ndarray]) -> bytes:
    """Criteo lines for n samples: fixed-width byte columns joined by tabs, NUL padding dropped."""
    n = len(label)
    tab = np.full((n, 1), ord("\t"), dtype=np.uint8)
    parts = [_decimal(label, 1)]
    for j in range(counts.shape[1]):
        parts += [tab, _decimal(counts[:, j], 10)]
    for column in hashes:
        parts += [tab, _hex8(column)]
    parts.append(np.full((n, 1), ord("\n"), dtype=np.uint8))
    buffer = np.concatenate(parts, axis=1).ravel()
    return buffer[buffer != 0].tobytes()


def write_criteo_tsv(source: SyntheticData | SyntheticConfig, path: str | Path) -> Path:
    """Write the generated log as raw Criteo TSV: label, I1..I13 counts, C1..C26 8-hex-digit hashes.

    Rows keep their order, so a reader that splits 80/10/10 by row order sees the same splits.
    The data are regenerated from the config (generation is deterministic). A path ending in
    ``.gz`` is gzip-compressed. The file appears only when complete.
    """
    config = source.config if isinstance(source, SyntheticData) else source
    if not isinstance(config, SyntheticConfig):
        raise ConfigError(f"write_criteo_tsv needs SyntheticData or a SyntheticConfig, got {type(source).__name__}")
    if config.num_dense != 13 or config.num_sparse != 26:
        raise ConfigError(
            f"Criteo TSV needs 13 dense and 26 sparse fields, the config has num_dense={config.num_dense},"
            f" num_sparse={config.num_sparse}; use num_dense=13,num_sparse=26"
        )
    raw = simulate(config)
    path = Path(path)
    with atomic_path(path) as tmp:
        opener: Any = gzip.open if path.suffix == ".gz" else open
        with opener(tmp, "wb") as handle:
            for start in range(0, config.rows, 1 << 16):
                rows = slice(start, min(start + (1 << 16), config.rows))
                hashes = [_hash32(ranks[rows], f) for f, ranks in enumerate(raw.ranks)]
                handle.write(_tsv_chunk(raw.labels[rows], raw.dense_counts[rows], hashes))
    return path
