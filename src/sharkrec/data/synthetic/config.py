"""The synthetic generator's config: field roles, :class:`SyntheticConfig` and its presets, validation,
and the ``--data`` spec the command line passes (:func:`parse_synthetic_spec`)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from sharkrec.errors import ConfigError
from sharkrec.io import read_json

# Criteo Kaggle cardinalities (as counted by facebookresearch/dlrm), the default spread of sizes
_CRITEO_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
# default role shares for 26 fields: 6 strong, 8 weak, 4 redundant, the rest (8) noise
_ROLE_SHARES = {"num_strong": 6 / 26, "num_weak": 8 / 26, "num_redundant": 4 / 26}


class FieldRole(str, enum.Enum):
    """What a field is to the hidden teacher."""

    STRONG = "strong"
    WEAK = "weak"
    NOISE = "noise"
    REDUNDANT = "redundant"
    DENSE = "dense"


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
        payload = read_json(path, "synthetic spec file", ConfigError, "pass an existing JSON file or key=value pairs")
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
