"""Very wide inputs (a libFM line of 20,000 pairs, schemas of thousands of fields) take linear work.

No test here measures time: each counts the operations that used to grow with the square of the width
(name comparisons) or with the width (one pandas string operation per column), and checks the result.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pandas.core.strings.accessor import StringMethods

from sharkrec.data.prepare import prepare_data
from sharkrec.data.readers import read_raw, schema_for
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.errors import SchemaError

WIDE = 20_000


class CountedName(str):
    """A field name that counts how often it is compared for equality."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountedName.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def counted_schema(n_fields: int, duplicate: bool = False) -> Schema:
    names = [CountedName(f"f{j}") for j in range(n_fields)]
    if duplicate:
        names[-1] = CountedName("f7")
    fields = (FieldSpec("label", FieldKind.LABEL), *(FieldSpec(name, FieldKind.SPARSE) for name in names))
    return Schema(fields, name="libfm", delimiter=" ", has_header=False)


def test_schema_duplicate_check_compares_each_name_a_bounded_number_of_times():
    CountedName.comparisons = 0
    schema = counted_schema(2_000)
    assert len(schema.sparse) == 2_000
    assert CountedName.comparisons <= 2_000  # a pairwise check made ~4,000,000
    with pytest.raises(SchemaError, match=r"schema names fields more than once: \['f7'\]; rename them"):
        counted_schema(50, duplicate=True)


def pair_line(label: str, indices: range, bad_at: int | None = None) -> str:
    pairs = [f"{j}:1" for j in indices]
    if bad_at is not None:
        pairs[bad_at] = "x:1"
    return " ".join([label, *pairs])


@pytest.fixture
def wide_file(tmp_path: Path) -> Path:
    lines = [pair_line("1", range(WIDE)), pair_line("-1", range(1, WIDE + 1)), pair_line("1", range(WIDE), 14_999)]
    path = tmp_path / "wide.libfm"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_20000_pair_file_is_read_with_a_fixed_number_of_string_operations(wide_file, monkeypatch):
    schema = schema_for("libfm", wide_file)
    assert len(schema.sparse) == WIDE and schema.sparse_names[-1] == f"f{WIDE}"
    accessors = 0
    real_init = StringMethods.__init__

    def counting_init(self, *args, **kwargs):
        nonlocal accessors
        accessors += 1
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(StringMethods, "__init__", counting_init)
    table = read_raw("libfm", wide_file, schema)
    assert accessors <= 4  # one per column made 40,000
    assert table.frame.shape == (2, WIDE + 1)
    assert table.line_numbers.tolist() == [1, 2]
    assert table.frame["label"].tolist() == ["1", "0"]
    assert table.frame["f1"].tolist() == ["0", "1"] and table.frame[f"f{WIDE}"].tolist() == ["19999", "20000"]
    (bad,) = table.bad_lines
    assert (bad.count, bad.first_line_numbers, bad.reasons) == (1, (3,), {"pair_syntax": 1})
    assert bad.first_problem == "pair 15000 'x:1' is not idx:number"


def test_prepare_skips_a_wide_first_line(tmp_path):
    """The field count is the most common pair count, so one 20,000-pair line is one bad line."""
    normal = [pair_line("1" if i % 3 else "-1", range(i % 5, i % 5 + 10)) for i in range(60)]
    path = tmp_path / "data.libfm"
    path.write_text("\n".join([pair_line("1", range(WIDE)), *normal]) + "\n")
    data = prepare_data("libfm", path)
    assert data.schema.name == "frappe" and len(data.schema.sparse) == 10
    assert sum(data.report["rows"].values()) == 60
    bad = data.report["bad_lines"]
    assert bad == {"count": 1, "reasons": {"pair_count": 1}, "first_line_numbers": {str(path): [1]}}
