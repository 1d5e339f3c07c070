"""The synthetic click-log generator: determinism, roles, ground truth, tails, encoding, spec, TSV."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sharkrec.data import synthetic
from sharkrec.data.synthetic import (
    FieldRole,
    SyntheticConfig,
    generate,
    parse_synthetic_spec,
    simulate,
    write_criteo_tsv,
)
from sharkrec.errors import ConfigError

SMALL = SyntheticConfig.small()
# 26 Criteo-like fields with shuffled roles, kept small for speed
WIDE = SyntheticConfig(rows=30_000, num_dense=13, ground_truth_sample=30_000, seed=7)


@pytest.fixture(scope="module")
def small_data() -> synthetic.SyntheticData:
    return generate(SMALL)


@pytest.fixture(scope="module")
def small_raw() -> synthetic.RawSample:
    return simulate(SMALL)


@pytest.fixture(scope="module")
def wide_data() -> synthetic.SyntheticData:
    return generate(WIDE)


def _ids(split) -> np.ndarray:  # (N, S) row ids of a split
    return np.stack([split.column(i).values for i in range(split.num_sparse)], axis=1)


def _labels(split) -> np.ndarray:
    return split.labels.numpy()[:, 0]


# -- determinism ---------------------------------------------------------------------------------


def test_same_seed_gives_identical_arrays(small_data):
    again = generate(SMALL)
    for name in ("train", "valid", "test"):
        a, b = small_data.data.split(name), again.data.split(name)
        np.testing.assert_array_equal(_ids(a), _ids(b))
        np.testing.assert_array_equal(a.dense.numpy(), b.dense.numpy())
        np.testing.assert_array_equal(a.labels.numpy(), b.labels.numpy())
        np.testing.assert_array_equal(small_data.teacher_logits[name], again.teacher_logits[name])
    assert small_data.ground_truth == again.ground_truth


def test_other_seed_gives_other_data(small_data):
    other = generate(SyntheticConfig.small(seed=1))
    assert not np.array_equal(_ids(small_data.data.train), _ids(other.data.train))
    assert not np.array_equal(_labels(small_data.data.train), _labels(other.data.train))
    assert small_data.ground_truth.bias != other.ground_truth.bias


# -- ground truth --------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["small", "wide"])
def test_ground_truth_orders_strong_over_weak_over_noise(which, small_data, wide_data):
    truth = (small_data if which == "small" else wide_data).ground_truth
    importance = truth.importance
    strong = [importance[n] for n in truth.names_with_role(FieldRole.STRONG)]
    weak = [importance[n] for n in truth.names_with_role(FieldRole.WEAK)]
    idle = [importance[n] for n in truth.names_with_role("noise") + truth.names_with_role("redundant")]
    assert strong and weak and idle
    assert min(strong) > 2 * max(weak)
    assert min(weak) > 0.0005
    assert max(idle) == 0.0  # the teacher never reads them
    for field in truth.fields:
        assert field.importance_se < 0.05 * field.importance + 1e-12
    order = truth.order
    assert set(order[: len(strong)]) - {"dense"} <= set(truth.names_with_role("strong"))
    assert list(order) == sorted(importance, key=lambda n: -importance[n])
    assert truth.field("dense").role is FieldRole.DENSE and truth.field("dense").importance > 0


def test_importance_matches_brute_force_resampling():
    """The vectorised KL importance equals a direct re-evaluation of the teacher with one field redrawn."""
    config = SyntheticConfig.small(rows=100_000)
    raw, teacher, layout = synthetic._simulate(config)
    truth = raw.ground_truth
    rng = np.random.default_rng(123)
    log_counts = synthetic._log_counts(raw.dense_counts)
    base = teacher.logits(raw.ranks, log_counts)
    np.testing.assert_allclose(base, raw.logits, rtol=1e-5, atol=1e-4)
    p = 1 / (1 + np.exp(-base))
    for f, name in enumerate(layout.names):
        if f not in teacher.main:
            continue
        ranks = list(raw.ranks)
        ranks[f] = ranks[f][rng.permutation(len(ranks[f]))]
        q = 1 / (1 + np.exp(-teacher.logits(ranks, log_counts)))
        kl = np.mean(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)))
        assert kl == pytest.approx(truth.field(name).importance, rel=0.1), name
    shuffled = log_counts[rng.permutation(len(log_counts))]
    q = 1 / (1 + np.exp(-teacher.logits(raw.ranks, shuffled)))
    kl = np.mean(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)))
    assert kl == pytest.approx(truth.field("dense").importance, rel=0.1)


def test_redundant_field_is_a_function_of_its_source(small_raw, small_data):
    truth = small_data.ground_truth
    (redundant,) = truth.names_with_role("redundant")
    source = truth.field(redundant).redundant_of
    assert truth.roles[source] is FieldRole.STRONG
    f, g = int(source[1:]) - 1, int(redundant[1:]) - 1
    src, red = small_raw.ranks[f].astype(np.int64), small_raw.ranks[g].astype(np.int64)
    images = np.full(src.max() + 1, -1)
    images[src] = red
    np.testing.assert_array_equal(images[src], red)  # one redundant value per source value
    assert len(np.unique(red)) < len(np.unique(src))  # C8 coarsens C1 (10 of 20 values)
    # the same holds for encoded row ids of values seen in training
    train = _ids(small_data.data.train)
    pairs = np.unique(train[:, [f, g]], axis=0)
    assert len(pairs) == len(np.unique(pairs[:, 0]))


def test_redundant_field_with_room_is_a_bijection():
    config = SyntheticConfig.small(cardinalities=(20, 300, 50, 1000, 10, 200, 3000, 20))
    raw = simulate(config)
    src, red = raw.ranks[0], raw.ranks[7]
    assert len(np.unique(np.stack([src, red]), axis=1).T) == len(np.unique(src)) == len(np.unique(red))


# -- value frequencies ---------------------------------------------------------------------------


@pytest.mark.parametrize("exponent", [1.05, 1.2, 1.4])
def test_value_frequencies_follow_zipf(exponent):
    config = SyntheticConfig(rows=200_000, num_sparse=1, num_dense=0, cardinalities=(100_000,),
                             zipf_exponent=exponent, ground_truth_sample=1000)
    counts = np.sort(np.bincount(simulate(config).ranks[0]))[::-1]
    ranks = np.arange(1, 201)
    slope = np.polyfit(np.log(ranks), np.log(counts[:200]), 1)[0]
    assert slope == pytest.approx(-exponent, abs=0.08)
    seen = counts[counts > 0]
    top = max(1, len(seen) // 100)
    assert seen[:top].sum() > 0.5 * seen.sum()  # top 1% of the values cover most occurrences


def test_per_field_exponents_are_used():
    config = SyntheticConfig(rows=100_000, num_sparse=2, num_dense=0, cardinalities=(50_000, 50_000),
                             zipf_exponent=(0.9, 1.6), ground_truth_sample=1000)
    raw = simulate(config)
    distinct = [len(np.unique(r)) for r in raw.ranks]
    assert distinct[0] > 5 * distinct[1]  # the flatter law reaches far more values


# -- labels --------------------------------------------------------------------------------------


@pytest.mark.parametrize("base_ctr", [0.05, 0.22, 0.5])
def test_positive_rate_matches_base_ctr(base_ctr):
    data = generate(SyntheticConfig.small(base_ctr=base_ctr))
    labels = np.concatenate([_labels(data.data.split(s)) for s in ("train", "valid", "test")])
    assert labels.mean() == pytest.approx(base_ctr, abs=0.03)
    assert data.ground_truth.positive_rate == pytest.approx(labels.mean())


def test_wide_positive_rate_and_teacher_quality(wide_data):
    truth = wide_data.ground_truth
    assert truth.positive_rate == pytest.approx(WIDE.base_ctr, abs=0.03)
    assert 0.72 < truth.teacher_test_auc < 0.92
    assert len(truth.names_with_role("strong")) == 6 and len(truth.names_with_role("redundant")) == 4


def _fit_auc(data: synthetic.SyntheticData, fields: list[str]) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import OneHotEncoder

    columns = [data.data.schema.sparse_names.index(name) for name in fields]
    train, test = _ids(data.data.train)[:, columns], _ids(data.data.test)[:, columns]
    encoder = OneHotEncoder(handle_unknown="ignore").fit(train)
    model = LogisticRegression(C=1.0, solver="liblinear").fit(encoder.transform(train), _labels(data.data.train))
    return float(roc_auc_score(_labels(data.data.test), model.predict_proba(encoder.transform(test))[:, 1]))


def test_logistic_regression_learns_strong_fields_not_noise(small_data):
    truth = small_data.ground_truth
    strong = _fit_auc(small_data, list(truth.names_with_role("strong")))
    noise = _fit_auc(small_data, list(truth.names_with_role("noise")))
    assert strong > 0.64
    assert abs(noise - 0.5) < 0.04
    # a model can use the redundant copy instead of its source
    assert _fit_auc(small_data, list(truth.names_with_role("redundant"))) > 0.56


# -- encoding ------------------------------------------------------------------------------------


def test_split_sizes_follow_row_order():
    assert SMALL.split_sizes() == (16_000, 2_000, 2_000)
    config = SyntheticConfig.small(rows=1001, split=(0.7, 0.2, 0.1), ground_truth_sample=1000)
    data = generate(config)
    assert (len(data.data.train), len(data.data.valid), len(data.data.test)) == (701, 200, 100)
    raw = simulate(config)
    np.testing.assert_array_equal(_labels(data.data.test), raw.labels[901:])


def test_vocabulary_is_train_only_with_oov_row(small_raw, small_data):
    n_train = SMALL.split_sizes()[0]
    train_labels = small_raw.labels[:n_train]
    for f, name in enumerate(small_data.data.schema.sparse_names):
        vocab = small_data.data.vocabularies[name]
        train_ranks, test_ranks = small_raw.ranks[f][:n_train], small_raw.ranks[f][n_train + 2000:]
        train_ids = small_data.data.train.column(f).values
        test_ids = small_data.data.test.column(f).values
        assert vocab.num_rows == len(np.unique(train_ranks)) + 1
        assert train_ids.min() >= 1 and train_ids.max() == vocab.num_rows - 1
        unseen = ~np.isin(test_ranks, train_ranks)
        np.testing.assert_array_equal(test_ids == 0, unseen)
        assert vocab.counts_[0] == 0 and vocab.counts_.sum() == n_train
        assert np.all(np.diff(vocab.counts_[1:]) <= 0)  # hottest first
        np.testing.assert_array_equal(vocab.counts_, np.bincount(train_ids, minlength=vocab.num_rows))
        assert vocab.positive_counts_.sum() == train_labels.sum()
        np.testing.assert_array_equal(vocab.transform(np.array([0, 1, vocab.num_rows + 5])), [0, 1, 0])
        np.testing.assert_array_equal(small_data.row_ranks[name][train_ids], train_ranks)
    assert (small_data.data.test.column(6).values == 0).any()  # C7 (3000 values) has unseen test values


def test_schema_dense_and_row_effects(small_data):
    schema = small_data.data.schema
    assert schema.sparse_names == tuple(f"C{i}" for i in range(1, 9))
    assert schema.dense_names == ("I1", "I2", "I3") and schema.label_names == ("click",)
    dense = small_data.data.train.dense.numpy()
    assert dense.dtype == np.float32 and dense.min() >= 0 and (dense == 0).mean() > 0.05
    counts = np.expm1(dense.astype(np.float64))
    assert np.all(np.abs(counts - np.round(counts)) <= 1e-3 * np.maximum(counts, 1))  # log1p of integers
    effects = small_data.row_effects
    assert not effects["C5"].any() and not effects["C8"].any()
    strong = effects["C1"][1:]
    counts_c1 = small_data.data.vocabularies["C1"].counts_[1:]
    assert np.average(strong, weights=counts_c1) == pytest.approx(0, abs=0.05)
    assert np.sqrt(np.average(strong**2, weights=counts_c1)) == pytest.approx(
        small_data.ground_truth.field("C1").weight, rel=0.1
    )


# -- spec parsing and validation ----------------------------------------------------------------


def test_parse_key_value_spec():
    config = parse_synthetic_spec("rows=100000,seed=3,num_sparse=8")
    assert (config.rows, config.seed, config.num_sparse) == (100_000, 3, 8)
    assert sum(config.role_counts().values()) == 8
    config = parse_synthetic_spec(" small , seed=5, split=0.7:0.2:0.1, zipf_exponent=1.1 ")
    assert config.rows == 20_000 and config.seed == 5 and config.split == (0.7, 0.2, 0.1)
    config = parse_synthetic_spec("rows=1e5,num_sparse=3,cardinalities=10:20:30,zipf_exponent=1:1.1:1.2")
    assert config.rows == 100_000 and config.cardinalities == (10, 20, 30)
    assert config.zipf_exponent == (1.0, 1.1, 1.2)
    assert parse_synthetic_spec("") == parse_synthetic_spec("default") == SyntheticConfig()
    assert parse_synthetic_spec("stress") == SyntheticConfig.stress()


def test_parse_json_spec(tmp_path: Path):
    path = tmp_path / "synthetic.json"
    path.write_text(json.dumps({"rows": 5000, "num_sparse": 4, "cardinalities": [5, 50, 500, 5000],
                                "split": [0.6, 0.2, 0.2], "shuffle_roles": False}))
    config = parse_synthetic_spec(str(path))
    assert config.cardinalities == (5, 50, 500, 5000) and config.split == (0.6, 0.2, 0.2)
    assert config.shuffle_roles is False
    assert SyntheticConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rows=1000,colour=red", r"unknown synthetic config keys \['colour'\]; allowed keys: rows, num_sparse"),
        ("rows=abc", "rows='abc' is not a number"),
        ("rows=1000.5", "not a whole number"),
        ("huge", "not a preset"),
        ("rows", "not a preset"),
        ("small,seed", "is not key=value"),
        ("/no/such/file.json", "does not exist"),
        ("shuffle_roles=maybe", "not a boolean"),
    ],
)
def test_parse_spec_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_synthetic_spec(spec)


def test_parse_bad_json(tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_text("{rows: 3")
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_synthetic_spec(str(path))
    path.write_text(json.dumps({"rows": 1000, "bogus": 1}))
    with pytest.raises(ConfigError, match="bogus"):
        parse_synthetic_spec(str(path))


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"rows": 10}, "rows"),
        ({"rows": 1.5}, "rows"),
        ({"num_sparse": 0}, "num_sparse"),
        ({"base_ctr": 1.5}, "base_ctr"),
        ({"base_ctr": 0.0}, "base_ctr"),
        ({"split": (0.5, 0.5, 0.5)}, "split"),
        ({"split": (0.9, 0.1)}, "split"),
        ({"cardinalities": (10, 20)}, "cardinalities"),
        ({"cardinalities": (1,) * 26}, r"cardinalities\[0\]"),
        ({"cardinalities": (10**7,) * 26}, r"cardinalities\[0\]"),
        ({"zipf_exponent": -1.0}, "zipf_exponent"),
        ({"zipf_exponent": (1.1, 1.2)}, "zipf_exponent"),
        ({"num_strong": 30}, "num_sparse=26"),
        ({"num_strong": 0, "num_redundant": 2}, "num_strong"),
        ({"num_interacting": 9, "num_strong": 6}, "num_interacting"),
        ({"num_dense_informative": 14}, "num_dense_informative"),
        ({"teacher_dim": 0}, "teacher_dim"),
        ({"signal_scale": -1.0}, "signal_scale"),
        ({"seed": -1}, "seed"),
        ({"shuffle_roles": "yes"}, "shuffle_roles"),
        ({"ground_truth_sample": 10}, "ground_truth_sample"),
    ],
)
def test_config_validation(overrides, name):
    with pytest.raises(ConfigError, match=name) as info:
        SyntheticConfig(**overrides)
    assert "\n" not in str(info.value) and ";" in str(info.value)


def test_role_defaults_scale_with_field_count():
    assert SyntheticConfig().role_counts() == {
        FieldRole.STRONG: 6, FieldRole.WEAK: 8, FieldRole.NOISE: 8, FieldRole.REDUNDANT: 4
    }
    for n in (1, 2, 3, 8, 40):
        counts = SyntheticConfig(num_sparse=n).role_counts()
        assert sum(counts.values()) == n and counts[FieldRole.STRONG] >= 1
    counts = SyntheticConfig(num_sparse=8, num_strong=8).role_counts()
    assert counts == {FieldRole.STRONG: 8, FieldRole.WEAK: 0, FieldRole.NOISE: 0, FieldRole.REDUNDANT: 0}


def test_default_cardinalities_are_capped_by_rows():
    cards = SyntheticConfig(rows=200_000).default_cardinalities()
    assert len(cards) == 26 and max(cards) == 50_000 and min(cards) == 3
    assert max(SyntheticConfig(rows=10_000_000).default_cardinalities()) == 1_000_000
    assert SyntheticConfig.stress().rows >= 1_000_000


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(100, 10**8),
    seed=st.integers(0, 2**31),
    base_ctr=st.floats(0.001, 0.999),
    num_sparse=st.integers(1, 60),
    shuffle=st.booleans(),
)
def test_key_value_spec_round_trip(rows, seed, base_ctr, num_sparse, shuffle):
    config = SyntheticConfig(rows=rows, seed=seed, base_ctr=base_ctr, num_sparse=num_sparse, shuffle_roles=shuffle)
    text = ",".join(f"{k}={v!r}" for k, v in config.to_dict().items()
                    if k in ("rows", "seed", "base_ctr", "num_sparse", "shuffle_roles"))
    assert parse_synthetic_spec(text) == config


# -- raw Criteo TSV ------------------------------------------------------------------------------


def test_write_criteo_tsv(tmp_path: Path):
    config = SyntheticConfig(rows=3000, ground_truth_sample=2000, seed=2)
    plain = write_criteo_tsv(config, tmp_path / "day.tsv")
    lines = plain.read_text().splitlines()
    assert len(lines) == 3000
    hexes = re.compile(r"^[0-9a-f]{8}$")
    rows = [line.split("\t") for line in lines]
    assert all(len(row) == 40 for row in rows)
    assert all(row[0] in ("0", "1") for row in rows)
    assert all(value.isdigit() for row in rows for value in row[1:14])
    assert all(hexes.match(value) for row in rows for value in row[14:])
    data = generate(config)
    labels = np.concatenate([_labels(data.data.split(s)) for s in ("train", "valid", "test")])
    np.testing.assert_array_equal(np.array([int(row[0]) for row in rows]), labels)
    raw = simulate(config)
    for f in (0, 2, 25):  # distinct hashes <-> distinct values
        column = np.array([row[14 + f] for row in rows])
        assert len(np.unique(column)) == len(np.unique(raw.ranks[f]))
    counts = np.array([[int(v) for v in row[1:14]] for row in rows])
    np.testing.assert_array_equal(counts, raw.dense_counts)
    np.testing.assert_allclose(np.log1p(counts[:2400]), data.data.train.dense.numpy(), rtol=1e-6)
    gz = write_criteo_tsv(data, tmp_path / "day.tsv.gz")
    with gzip.open(gz, "rt") as handle:
        assert handle.read() == plain.read_text()


def test_write_criteo_tsv_needs_criteo_shape(tmp_path: Path):
    with pytest.raises(ConfigError, match="13 dense and 26 sparse"):
        write_criteo_tsv(SMALL, tmp_path / "x.tsv")
    assert not (tmp_path / "x.tsv").exists()
