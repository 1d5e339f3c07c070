"""One entry point for every data format, including the built-in synthetic generator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sharkrec.data.dataset import PreparedData
from sharkrec.data.schema import Schema
from sharkrec.errors import ConfigError

FORMATS = ("criteo", "libfm", "movielens", "csv", "tsv", "parquet", "synthetic", "prepared")


def load_data(
    fmt: str,
    data: str | Path | None,
    *,
    schema: str | Path | Schema | None = None,
    on_bad_line: str = "skip",
    split: tuple[float, float, float] | None = None,
    cache_dir: str | Path | None = None,
    vocabularies: dict[str, Any] | None = None,
    min_count: int | None = None,
) -> PreparedData:
    """Read ``data`` in format ``fmt`` into train / valid / test splits.

    ``fmt == "prepared"``: ``data`` is a folder ``sharkrec prepare --stream`` wrote (memory-mapped splits).
    ``fmt == "synthetic"``: ``data`` is a generator spec (``rows=100000,seed=1``, a JSON file, or
    ``None`` / ``default``); the ground truth of field importance is in ``report["ground_truth"]``.
    ``vocabularies`` (from a trained model) encodes the data with the model's rows instead of
    building new ones from the training split. ``min_count`` sends ids seen fewer times in the
    training split to the OOV row (overrides the schema's per-field value).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "synthetic":
        from sharkrec.data.synthetic import generate, parse_synthetic_spec

        config = parse_synthetic_spec("" if data is None else str(data))
        generated = generate(config)
        prepared = generated.data
        prepared.report["ground_truth"] = generated.ground_truth.to_dict()
        if vocabularies is not None:
            _check_vocabularies(prepared, vocabularies)
        return prepared
    if data is None:
        raise ConfigError(f"format {fmt!r} needs --data PATH (a file or a folder with train/dev/test files)")
    if fmt == "prepared":
        return _load_prepared(Path(data), vocabularies)
    if fmt == "parquet":
        from sharkrec.data.parquet_dir import is_dataset_dir

        if is_dataset_dir(data):
            raise ConfigError(
                f"{data} is a Parquet dataset folder; prepare it once with 'sharkrec prepare --format parquet --data "
                f"{data} --out OUT' (choose splits with --train/--valid/--test), then pass --format prepared --data "
                "OUT/prepared"
            )
    from sharkrec.data.prepare import prepare_data

    schema_obj = Schema.load(schema) if isinstance(schema, (str, Path)) else schema
    kwargs: dict[str, Any] = {"on_bad_line": on_bad_line, "cache_dir": cache_dir, "min_count": min_count}
    if split is not None:
        kwargs["split"] = split
    if vocabularies is not None:
        kwargs["vocabularies"] = vocabularies
    return prepare_data(fmt, data, schema_obj, **kwargs)


def _load_prepared(folder: Path, vocabularies: dict[str, Any] | None) -> PreparedData:
    from sharkrec.data.mapped import is_prepared_dir, load_prepared_dir

    if not is_prepared_dir(folder) and is_prepared_dir(folder / "prepared"):
        folder = folder / "prepared"  # the --out folder of 'sharkrec prepare --stream'
    prepared = load_prepared_dir(folder)
    if vocabularies is not None:
        for name, vocab in vocabularies.items():
            mine = prepared.vocabularies.get(name)
            if mine is None or mine.num_rows != vocab.num_rows or list(mine.keys_) != list(vocab.keys_):
                raise ConfigError(
                    f"the prepared data in {folder} was encoded with other vocabularies than the model's (field "
                    f"{name!r}); prepare the raw data again with the model's vocabularies, or pass the raw data"
                )
    return prepared


def _check_vocabularies(prepared: PreparedData, vocabularies: dict[str, Any]) -> None:
    model_fields, data_fields = list(vocabularies), list(prepared.schema.sparse_names)
    if model_fields != data_fields:
        raise ConfigError(
            f"the data does not match the model's schema (sparse fields: model {model_fields}, data {data_fields}); "
            "use the generator settings the model was trained with"
        )
    for name, vocab in vocabularies.items():
        if name in prepared.vocabularies and vocab.num_rows != prepared.vocabularies[name].num_rows:
            raise ConfigError(
                f"field {name!r} has {prepared.vocabularies[name].num_rows} rows in this synthetic data but "
                f"{vocab.num_rows} in the model; use the generator settings the model was trained with"
            )
