"""The ``sharkrec`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared machines 20x

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from sharkrec.errors import ConfigError, SharkrecError


def hold_output(out: Path | None, command: str) -> Any:
    """Lock ``--out`` for this command: a second run into it fails with the holder's PID (see distributed)."""
    from sharkrec.distributed import hold_output as hold

    return hold(out, command)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compress the embedding layer of recommendation models.",
)


@app.callback()
def _torchrun() -> None:
    """Under torchrun (WORLD_SIZE > 1): join the process group (sharkrec.distributed); only rank 0 prints."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from sharkrec.distributed import init_from_env, is_main

        init_from_env()
        if not is_main():
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open for the process's life


class Format(str, Enum):
    criteo = "criteo"
    libfm = "libfm"
    movielens = "movielens"
    csv = "csv"
    tsv = "tsv"
    parquet = "parquet"
    synthetic = "synthetic"
    prepared = "prepared"


FormatOpt = Annotated[Format, typer.Option("--format", help="Input format.")]
DataOpt = Annotated[
    str,
    typer.Option(
        "--data", help="A file or a folder with train/dev/test files (synthetic: a spec like rows=100000,seed=1)."
    ),
]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder (report.json and results go here).")]
SchemaOpt = Annotated[Path | None, typer.Option("--schema", help="Schema JSON (needed for csv/tsv/parquet).")]
BadLineOpt = Annotated[str, typer.Option("--on-bad-line", help="skip (count and report) or error.")]
CacheOpt = Annotated[Path | None, typer.Option("--cache-dir", help="Cache preprocessed data here.")]
SplitOpt = Annotated[str | None, typer.Option("--split", help="Row-order split fractions, e.g. 0.8,0.1,0.1.")]
MinCountOpt = Annotated[
    int | None, typer.Option("--min-count", help="Ids seen fewer times in train share the OOV row.")
]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="Torch CPU threads (default: all cores).")]


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None or text == "":
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise SharkrecError(f"{what} {text!r} is not a comma-separated list of numbers; e.g. 0.8,0.1,0.1") from None


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    values = _floats(text, what)
    if values is None:
        return None
    if any(v != int(v) or v < 1 for v in values):
        raise SharkrecError(f"{what} {text!r} must be positive integers, e.g. 256,128")
    return tuple(int(v) for v in values)


def _load(
    fmt: Format,
    data: str | None,
    schema: Path | None,
    on_bad_line: str,
    split: str | None,
    cache_dir: Path | None,
    vocabularies: Any = None,
    min_count: int | None = None,
) -> Any:
    from sharkrec.data.loading import load_data

    fractions = _floats(split, "--split")
    if fractions is not None and len(fractions) != 3:
        raise SharkrecError(f"--split {split!r} needs three fractions (train, valid, test), e.g. 0.8,0.1,0.1")
    return load_data(
        fmt.value,
        data,
        schema=schema,
        on_bad_line=on_bad_line,
        split=fractions,
        cache_dir=cache_dir,
        vocabularies=vocabularies,
        min_count=min_count,
    )


def _load_with_model(model: Path, fmt: Format, data: str | None, schema: Path | None, on_bad_line: str,
                     split: str | None) -> tuple[Any, Any]:
    """A saved model and the data encoded with that model's vocabularies (not new ones)."""
    from sharkrec.train.checkpoint import load_model

    bundle = load_model(model)
    return bundle, _load(fmt, data, schema, on_bad_line, split, None, vocabularies=bundle.vocabularies)


def _threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads < 1:
            raise SharkrecError(f"--threads {threads} must be 1 or more")
        torch.set_num_threads(threads)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("runs/demo"),
    rows: Annotated[int, typer.Option(help="Synthetic rows to generate.")] = 300_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: ThreadsOpt = None,
) -> None:
    """Whole pipeline on built-in synthetic data: generate, train, evaluate, report."""
    from sharkrec.demo import run_demo

    _threads(threads)
    run_demo(out, rows=rows, seed=seed)


@app.command()
def prepare(
    fmt: FormatOpt,
    data: DataOpt,
    out: OutOpt,
    schema: SchemaOpt = None,
    on_bad_line: BadLineOpt = "skip",
    split: SplitOpt = None,
    min_count: MinCountOpt = None,
    stream: Annotated[bool | None, typer.Option(
        "--stream/--no-stream",
        help="Prepare in chunks into OUT/prepared (memory-mapped splits) instead of in memory; default: stream "
             "inputs over 1 GiB and Parquet dataset folders.")] = None,
    chunk_mb: Annotated[int, typer.Option("--chunk-mb", help="Input read per chunk when streaming (MiB).")] = 32,
    train_selection: Annotated[str | None, typer.Option(
        "--train", help="Parquet dataset folder: the partitions of the train split, e.g. 'day<=17'.")] = None,
    valid_selection: Annotated[str | None, typer.Option(
        "--valid", help="Parquet dataset folder: the valid split's partitions, e.g. 'day==18'.")] = None,
    test_selection: Annotated[str | None, typer.Option(
        "--test", help="Parquet dataset folder: the test split's partitions, e.g. 'day==19'.")] = None,
) -> None:
    """Parse and encode a dataset; write the schema, vocabulary sizes and a data report (streaming: the data too)."""
    from sharkrec.data.export import write_prepared

    partitions = {name: text for name, text in
                  (("train", train_selection), ("valid", valid_selection), ("test", test_selection)) if text}
    if fmt is Format.prepared or (fmt is Format.synthetic and (stream or partitions)):
        raise SharkrecError(f"prepare --format {fmt.value} does not stream; pass the raw data's format")
    from sharkrec.data.stream import should_stream

    if should_stream(fmt.value, data, stream, partitions):
        report = _prepare_stream(fmt, data, out, schema, on_bad_line, split, min_count, chunk_mb, partitions)
    else:
        with hold_output(out, "prepare"):
            prepared = _load(fmt, data, schema, on_bad_line, split, cache_dir=out / "cache", min_count=min_count)
            report = write_prepared(prepared, out)
    if report is None:
        return
    typer.echo(
        f"rows train/valid/test: {report['rows']['train']}/{report['rows']['valid']}/{report['rows']['test']}; "
        f"bad lines skipped: {report.get('bad_lines', {}).get('count', 0)}; wrote {out / 'report.json'}"
    )


def _prepare_stream(fmt: Format, data: str, out: Path, schema: Path | None, on_bad_line: str, split: str | None,
                    min_count: int | None, chunk_mb: int, partitions: dict[str, str]) -> dict[str, Any] | None:
    """``prepare --stream``: the prepared data in ``out/prepared``, the report and schema in ``out``."""
    import time

    from sharkrec import distributed
    from sharkrec.data.export import write_prepared
    from sharkrec.data.mapped import load_prepared_dir
    from sharkrec.data.prepare import DEFAULT_SPLIT
    from sharkrec.data.schema import Schema
    from sharkrec.data.stream import prepare_stream

    if chunk_mb < 1:
        raise SharkrecError(f"--chunk-mb {chunk_mb} must be 1 or more")
    fractions = _floats(split, "--split")
    if fractions is not None and len(fractions) != 3:
        raise SharkrecError(f"--split {split!r} needs three fractions (train, valid, test), e.g. 0.8,0.1,0.1")
    last = [time.monotonic()]

    def progress(rows: int, pass_number: int) -> None:
        if distributed.is_main() and time.monotonic() - last[0] > 10:
            last[0] = time.monotonic()
            typer.echo(f"prepare pass {pass_number}/2: {rows:,} rows", err=True)

    with hold_output(out, "prepare"):
        prepare_stream(fmt.value, data, out / "prepared", Schema.load(schema) if schema is not None else None,
                       on_bad_line=on_bad_line, split=fractions or DEFAULT_SPLIT, min_count=min_count,
                       partitions=partitions, chunk_bytes=chunk_mb << 20, on_progress=progress)
        if not distributed.is_main():
            return None
        report = write_prepared(load_prepared_dir(out / "prepared"), out)
    typer.echo(f"prepared data in {out / 'prepared'}; train on it with --format prepared --data {out / 'prepared'}")
    return report


class SchemaFormat(str, Enum):
    csv = "csv"
    tsv = "tsv"
    parquet = "parquet"


@app.command("schema")
def schema_command(
    data: Annotated[Path, typer.Option("--data", help="CSV/TSV/Parquet file (or .gz), or a folder (its train file).")],
    label: Annotated[list[str], typer.Option("--label", help="Label column; repeat (or comma-separate) for several.")],
    fmt: Annotated[SchemaFormat | None, typer.Option("--format", help="Default: from the file's extension.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Schema JSON to write.")] = Path("schema.json"),
    sample_rows: Annotated[int | None, typer.Option(help="Rows read from the start of the file (100,000).")] = None,
    dense_min_distinct: Annotated[
        int | None, typer.Option(help="Numeric columns with this many distinct values are dense (100).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
) -> None:
    """Guess a schema from the first rows of a file (labels, dense, sparse, ids left out); write it as JSON."""
    from sharkrec.data.infer import infer_schema
    from sharkrec.errors import SchemaError
    from sharkrec.io import write_json

    if out.exists() and not force:  # a schema is often edited by hand: never overwrite it silently
        raise SchemaError(f"{str(out)!r} exists; pass --force to replace it or choose another --out")
    labels = [name.strip() for text in label for name in text.split(",") if name.strip()]
    limits = {"sample_rows": sample_rows, "dense_min_distinct": dense_min_distinct}
    inferred = infer_schema(data, labels, None if fmt is None else fmt.value,
                            **{key: value for key, value in limits.items() if value is not None})
    typer.echo(inferred.summary())
    write_json(out, inferred.to_dict())
    typer.echo(f"wrote {out}")


@app.command()
def train(
    fmt: FormatOpt,
    data: DataOpt,
    out: OutOpt,
    schema: SchemaOpt = None,
    precision: Annotated[
        str, typer.Option(help="Embedding row storage: fp32, fp16, int8, int4, f-quant, mpe, alpt, random "
                               "(random: tiers drawn at random at f-quant's budget; not fp32: use adagrad or sgd).")
    ] = "fp32",
    memory_budget: Annotated[float | None, typer.Option(help="f-quant: bytes kept as a share of fp32.")] = None,
    t8: Annotated[float | None, typer.Option(help="f-quant: priority below which rows are int8 (Eq. 8).")] = None,
    t16: Annotated[float | None, typer.Option(help="f-quant: priority from which rows are fp32 (Eq. 8).")] = None,
    alpha: Annotated[float | None, typer.Option(help="f-quant: weight of positive samples (Eq. 7).")] = None,
    beta: Annotated[float | None, typer.Option(help="f-quant: decay rate of the priority (Eq. 7).")] = None,
    recheck_every: Annotated[int | None, typer.Option(help="f-quant/mpe: batches between tier checks.")] = None,
    int4: Annotated[bool, typer.Option("--int4", help="f-quant: allow an int4 tier for the coldest rows.")] = False,
    t4: Annotated[float | None, typer.Option(help="f-quant --int4: priority below which rows are int4.")] = None,
    cache_fraction: Annotated[float | None, typer.Option(help="mpe: share of rows in the fp32 cache.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (model init and data order).")] = 0,
    task_weights: Annotated[str | None, typer.Option(help="Loss weight per task, e.g. 1,0.5.")] = None,
    optimizer: Annotated[str | None, typer.Option(
        help="sgd, adagrad or adam (tables updated sparsely) [default: adagrad].")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate [default: 0.05, or tuned].")] = None,
    embedding_lr: Annotated[float | None, typer.Option(help="Learning rate of the tables [default: --lr].")] = None,
    tune: Annotated[str, typer.Option(
        help="auto, on or off: search lr x embedding L2 on the validation split (auto: when the training split has "
             "at most 300,000 rows and none of --optimizer/--lr/--embedding-lr/--embedding-l2 is given).")] = "auto",
    batch_size: Annotated[int | None, typer.Option(help="Samples per step [default: 512].")] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the training split [default: 20].")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    eval_every: Annotated[int | None, typer.Option(
        help="Validate every N steps [default: --evals-per-epoch times an epoch].")] = None,
    evals_per_epoch: Annotated[int | None, typer.Option(help="Validations per epoch [default: 4].")] = None,
    patience: Annotated[int | None, typer.Option(
        help="Validations without improvement before stopping, 0: never [default: 6].")] = None,
    stop_metric: Annotated[str | None, typer.Option(
        help="auc or logloss: picks the best checkpoint (and the tuned settings) [default: logloss].")] = None,
    embedding_dim: Annotated[int, typer.Option(help="Embedding dimension.")] = 16,
    embedding_l2: Annotated[float | None, typer.Option(
        help="L2 on looked-up embedding vectors [default: 0.001, or tuned].")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="L2 on dense weights [default: 1e-5].")] = None,
    top_mlp: Annotated[str, typer.Option(help="Top MLP hidden sizes.")] = "256,128",
    bottom_mlp: Annotated[str, typer.Option(help="Bottom MLP hidden sizes.")] = "64",
    head: Annotated[str, typer.Option(help="shared-bottom or mmoe.")] = "shared-bottom",
    interaction: Annotated[str, typer.Option(help="dot or dot-concat.")] = "dot",
    dropout: Annotated[float, typer.Option(help="Dropout in the MLPs.")] = 0.0,
    on_bad_line: BadLineOpt = "skip",
    split: SplitOpt = None,
    cache_dir: CacheOpt = None,
    min_count: MinCountOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out.")] = False,
    shard: Annotated[str | None, typer.Option(
        help="table_wise, row_wise or auto: under torchrun, shard the tables across ranks with TorchRec "
             "(docs/distributed.md); fp32 or f-quant tables, no tuning.")] = None,
    rank_memory: Annotated[int | None, typer.Option(
        help="--shard: table bytes one rank may hold; a plan over it is refused before training.")] = None,
    threads: ThreadsOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Train a DLRM (one or several labels) and write model.pt and report.json."""
    from sharkrec.report import print_metrics
    from sharkrec.train.run import train_model
    from sharkrec.train.trainer import TrainConfig
    from sharkrec.train.tune import describe_trial, should_tune, tune_grid

    precision_options: dict[str, Any] = {
        key: value
        for key, value in {
            "memory_budget": memory_budget,
            "t8": t8,
            "t16": t16,
            "t4": t4,
            "alpha": alpha,
            "beta": beta,
            "recheck_every": recheck_every,
            "cache_fraction": cache_fraction,
        }.items()
        if value is not None
    }
    if int4:
        precision_options["use_int4"] = True
    _threads(threads)
    given: dict[str, Any] = {  # only what the user set: the rest is TrainConfig's default, written once there
        key: value
        for key, value in {
            "optimizer": optimizer, "lr": lr, "embedding_lr": embedding_lr, "batch_size": batch_size,
            "epochs": epochs, "max_steps": max_steps, "eval_every": eval_every, "evals_per_epoch": evals_per_epoch,
            "patience": patience, "stop_metric": stop_metric, "embedding_l2": embedding_l2,
            "weight_decay": weight_decay, "task_weights": _floats(task_weights, "--task-weights"),
        }.items()
        if value is not None
    }
    config = TrainConfig(**given, seed=seed, progress=not quiet)  # validates every value
    if shard is not None:
        _check_shard_options(shard, rank_memory, precision, tune)
    prepared = _load(fmt, data, schema, on_bad_line, split, cache_dir, min_count=min_count)
    search = shard is None and should_tune(tune, len(prepared.train), tuple(given))
    if search:
        typer.echo(f"tuning lr x embedding L2 on the validation split ({len(tune_grid(config))} trainings; "
                   "--tune off or --lr/--embedding-l2 to skip)")
    options = {
        "embedding_dim": embedding_dim,
        "top_mlp": _ints(top_mlp, "--top-mlp"),
        "bottom_mlp": _ints(bottom_mlp, "--bottom-mlp"),
        "head": head,
        "interaction": interaction,
        "dropout": dropout,
    }
    if shard is not None:
        from sharkrec.train.sharded import train_sharded
        from sharkrec.train.sharded_fq import train_sharded_fq

        if precision == "f-quant":
            _, report = train_sharded_fq(prepared, config, out, shard=shard, policy_options=precision_options,
                                         rank_memory=rank_memory, model_options=options, resume=resume)
        else:
            _, report = train_sharded(prepared, config, out, shard=shard, rank_memory=rank_memory,
                                      model_options=options, resume=resume)
        print_metrics(report)
        held = ", ".join(f"rank {r}: {b} B" for r, b in enumerate(report["memory"]["embedding_bytes_per_rank"]))
        typer.echo(f"tables {report['memory']['embedding_bytes_fp32']} B fp32; held {held}")
        typer.echo(f"wrote {out / 'model.pt'} and {out / 'report.json'}")
        return
    _, report = train_model(
        prepared,
        config,
        out,
        resume=resume,
        model_options=options,
        precision=precision,
        precision_options=precision_options,
        tune=search,
        on_trial=lambda record: typer.echo(describe_trial(record, config.stop_metric)),
    )
    if search:
        chosen = report["tuning"]["chosen_settings"]
        typer.echo("tuned: " + ", ".join(f"{key} {value:g}" for key, value in chosen.items()))
    print_metrics(report)
    typer.echo(f"wrote {out / 'model.pt'} and {out / 'report.json'}")


def _check_shard_options(shard: str, rank_memory: int | None, precision: str, tune: str) -> None:
    """One-line errors for what ``--shard`` does not combine with (checked before any data is read)."""
    from sharkrec.interop.sharding import SHARD_KINDS

    if shard not in SHARD_KINDS:
        raise ConfigError(f"unknown --shard {shard!r}; use one of {', '.join(SHARD_KINDS)}")
    if precision not in ("fp32", "f-quant"):
        raise ConfigError(f"--shard trains fp32 or f-quant tables; --precision {precision} is not supported on "
                          "sharded tables (docs/distributed.md, F-Quantization)")
    if precision == "f-quant" and shard not in ("table_wise", "row_wise"):
        raise ConfigError(f"--shard {shard} with --precision f-quant is not supported; use --shard table_wise or "
                          "row_wise (F-Quantization keeps whole rows on one rank)")
    if tune == "on":
        raise ConfigError("--shard does not tune; give --lr and run without --tune on")
    if rank_memory is not None and rank_memory < 1:
        raise ConfigError(f"--rank-memory {rank_memory} must be a positive number of bytes")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", help="model.pt written by 'sharkrec train'.")],
    fmt: FormatOpt,
    data: DataOpt,
    out: Annotated[Path | None, typer.Option("--out")] = None,
    schema: SchemaOpt = None,
    on_bad_line: BadLineOpt = "skip",
    split: SplitOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Evaluate a saved model on data encoded with the model's vocabularies."""
    from sharkrec.report import print_metrics
    from sharkrec.train.run import evaluate_bundle

    _threads(threads)
    bundle, prepared = _load_with_model(model, fmt, data, schema, on_bad_line, split)
    with hold_output(out, "evaluate"):
        report = evaluate_bundle(bundle, prepared, out)
    print_metrics(report)


def _names(text: str | None) -> list[str] | None:
    if text is None or text.strip() == "":
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


ModelOpt = Annotated[Path, typer.Option("--model", help="model.pt written by 'sharkrec train' (or prune).")]
MethodOpt = Annotated[
    str,
    typer.Option(
        "--method",
        help="default (taylor2), taylor, taylor-abs, taylor2, taylor-logit, permutation, exact, lasso,"
        " fscd, autofield, adafs, umec (prune also: random).",
    ),
]
ScoreSplitOpt = Annotated[str, typer.Option("--score-split", help="Split to score fields on: train, valid, test.")]
ScoreBatchOpt = Annotated[int, typer.Option("--batch-size", help="Scoring batch size.")]
MaxSamplesOpt = Annotated[int | None, typer.Option("--max-samples", help="Score on at most this many samples.")]
KeepOpt = Annotated[str | None, typer.Option("--keep", help="Never remove these fields, e.g. C1,C2.")]


@app.command()
def importance(
    model: ModelOpt,
    fmt: FormatOpt,
    data: DataOpt,
    out: OutOpt,
    method: MethodOpt = "default",
    batch_size: ScoreBatchOpt = 4096,
    max_samples: MaxSamplesOpt = None,
    repeats: Annotated[int | None, typer.Option(help="permutation: shuffles per field (T).")] = None,
    fields: Annotated[str | None, typer.Option(help="Score only these fields, e.g. C1,C2.")] = None,
    score_split: ScoreSplitOpt = "valid",
    seed: Annotated[int, typer.Option(help="Random seed of the method's draws.")] = 0,
    schema: SchemaOpt = None,
    on_bad_line: BadLineOpt = "skip",
    split: SplitOpt = None,
    shard: Annotated[str | None, typer.Option(
        help="table_wise, row_wise or auto: under torchrun, score with the fp32 tables sharded across ranks "
             "(TorchRec; taylor, taylor-abs, taylor2).")] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Rank a model's fields by importance (SHARK F-Permutation or a baseline); write report.json and a chart."""
    from sharkrec.importance.run import print_importance, run_importance

    _threads(threads)
    bundle, prepared = _load_with_model(model, fmt, data, schema, on_bad_line, split)
    with hold_output(out, "importance"):
        report = run_importance(bundle, prepared, method, out, split=score_split, batch_size=batch_size,
                                max_samples=max_samples, repeats=repeats, fields=_names(fields), seed=seed,
                                shard=shard)
    print_importance(report)
    typer.echo(f"wrote {out / 'report.json'} and {out / 'importance.png'}")


@app.command()
def prune(
    model: ModelOpt,
    fmt: FormatOpt,
    data: DataOpt,
    out: OutOpt,
    target_memory: Annotated[float, typer.Option(help="Share of embedding bytes to keep, in (0, 1).")],
    method: MethodOpt = "default",
    t_accuracy: Annotated[float, typer.Option(help="Stop before test AUC < this x the base AUC, in (0, 1].")] = 0.9925,
    fields_per_step: Annotated[int, typer.Option(help="Tables removed per step (f).")] = 1,
    fine_tune_fraction: Annotated[float, typer.Option(help="Share of train data fine-tuned on per step.")] = 0.1,
    fine_tune_steps: Annotated[int | None, typer.Option(help="At most this many fine-tune steps per step.")] = None,
    fine_tune_lr: Annotated[float | None, typer.Option(help="Fine-tune lr (default: 0.01 x the model's).")] = None,
    fine_tune_optimizer: Annotated[str | None, typer.Option(help="Fine-tune optimizer (default: the model's).")] = None,
    order: Annotated[str | None, typer.Option(help="Remove fields in this order, no scoring, e.g. C3,C7.")] = None,
    keep: KeepOpt = None,
    batch_size: ScoreBatchOpt = 4096,
    max_samples: MaxSamplesOpt = None,
    score_split: ScoreSplitOpt = "valid",
    seed: Annotated[int, typer.Option(help="Random seed (support samples, draws, random order).")] = 0,
    schema: SchemaOpt = None,
    on_bad_line: BadLineOpt = "skip",
    split: SplitOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Prune the weakest embedding tables (SHARK Algorithm 1); write model.pt, plan.json, report.json, a PNG."""
    from sharkrec.prune.loop import PruneConfig
    from sharkrec.prune.run import fine_tune_config, print_step, run_prune
    from sharkrec.report import print_metrics

    _threads(threads)
    bundle, prepared = _load_with_model(model, fmt, data, schema, on_bad_line, split)
    config = PruneConfig(
        target_memory=target_memory,
        t_accuracy=t_accuracy,
        fields_per_step=fields_per_step,
        fine_tune_fraction=fine_tune_fraction,
        fine_tune=fine_tune_config(bundle, max_steps=fine_tune_steps, lr=fine_tune_lr, optimizer=fine_tune_optimizer),
        batch_size=batch_size,
        max_samples=max_samples,
        score_split=score_split,
        keep=tuple(_names(keep) or ()),
        seed=seed,
    )
    with hold_output(out, "prune"):
        result, report = run_prune(bundle, prepared, method, out, config=config, order=_names(order),
                                   on_step=print_step)
    print_metrics(report)
    typer.echo(f"{result.stopped_because}; removed {', '.join(result.plan.removed) or 'nothing'}")
    typer.echo(f"wrote {out / 'model.pt'}, {out / 'plan.json'}, {out / 'report.json'} and {out / 'pruning_curve.png'}")


def _ratios(text: str, option: str) -> tuple[float, ...]:
    """Comma-separated shares (``none`` or empty: none); a one-line error naming ``option`` otherwise."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not a comma-separated list of numbers; give e.g. 0.1,0.02 or none"
                          ) from None


@app.command()
def compress(
    model: ModelOpt,
    fmt: FormatOpt,
    data: DataOpt,
    out: OutOpt,
    target_memory: Annotated[float, typer.Option(help="Share of the embedding bytes to keep, in (0, 1].")] = 0.3,
    max_auc_drop: Annotated[float, typer.Option(help="Largest relative validation AUC drop, e.g. 0.0015.")] = 0.0015,
    max_trainings: Annotated[int, typer.Option(help="Fine-tune at most this many candidates.")] = 3,
    method: MethodOpt = "default",
    fine_tune_epochs: Annotated[int, typer.Option(help="Epochs of each candidate's fine-tune.")] = 2,
    fine_tune_lr: Annotated[float | None, typer.Option(help="Fine-tune lr (default: 0.01 x the model's).")] = None,
    no_int4: Annotated[bool, typer.Option("--no-int4", help="Never use the int4 tier.")] = False,
    keep: KeepOpt = None,
    batch_size: ScoreBatchOpt = 4096,
    max_samples: MaxSamplesOpt = None,
    seed: Annotated[int, typer.Option(help="Random seed (scoring draws, fine-tune order).")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out.")] = False,
    cluster_rows_ratio: Annotated[
        float | None, typer.Option(help="Saec stage: first cluster each field's values to this share of its rows.")
    ] = None,
    cluster_method: Annotated[str, typer.Option(help="Clustering stage: saec, kmeans, hashing, frequency.")] = "saec",
    tail_ratios: Annotated[
        str, typer.Option(help="Rows axis: shares of a field's rows kept via a hashed tail, e.g. 0.1,0.02 ('none').")
    ] = "0.5,0.25,0.1,0.05,0.02,0.01",
    hot_share: Annotated[float, typer.Option(help="Share of a tailed field's rows kept by its hottest values.")] = 0.5,
    schema: SchemaOpt = None,
    on_bad_line: BadLineOpt = "skip",
    split: SplitOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Prune (F-Permutation), cut rows (hashed tail) and quantize (F-Quantization) to a memory target; write
    model.pt, artifact/, report."""
    from sharkrec.compress import CompressConfig, run_compress
    from sharkrec.compress.run import fine_tune_for, print_event, print_summary

    _threads(threads)
    bundle, prepared = _load_with_model(model, fmt, data, schema, on_bad_line, split)
    fine_tune = fine_tune_for(bundle, epochs=fine_tune_epochs, lr=fine_tune_lr, seed=seed)
    config = CompressConfig(target_memory=target_memory, max_auc_drop=max_auc_drop, max_trainings=max_trainings,
                            importance_method=method, fine_tune=fine_tune, allow_int4=not no_int4,
                            keep=tuple(_names(keep) or ()), batch_size=batch_size, max_samples=max_samples, seed=seed,
                            cluster_rows_ratio=cluster_rows_ratio, cluster_method=cluster_method,
                            tail_ratios=_ratios(tail_ratios, "--tail-ratios"), hot_share=hot_share)
    with hold_output(out, "compress"):
        result = run_compress(bundle, prepared, config, out, on_event=print_event, resume=resume)
    print_summary(result.report)
    typer.echo(f"wrote {out / 'model.pt'}, {out / 'artifact'} and {out / 'report.json'}")


@app.command()
def cluster(
    model: ModelOpt,
    fmt: FormatOpt,
    data: DataOpt,
    out: OutOpt,
    rows_ratio: Annotated[float | None, typer.Option(help="Share of embedding rows to keep, in (0, 1].")] = None,
    target_bytes: Annotated[int | None, typer.Option(help="Or: fp32 bytes allowed for all cluster rows.")] = None,
    method: Annotated[str, typer.Option(help="saec (fast), kmeans (full), hashing or frequency.")] = "saec",
    metric: Annotated[str, typer.Option(help="Distance on trained rows: euclidean or cosine.")] = "euclidean",
    head_share: Annotated[float, typer.Option(help="Share of occurrences the k-means head covers (saec).")] = 0.95,
    fields: Annotated[str | None, typer.Option(help="Cluster only these fields, e.g. C3,C12.")] = None,
    fine_tune_steps: Annotated[int | None, typer.Option(help="Fine-tune at most this many steps (0: none).")] = None,
    fine_tune_lr: Annotated[float | None, typer.Option(help="Fine-tune lr (default: 0.01 x the model's).")] = None,
    quantize: Annotated[str | None, typer.Option(help="Then store cluster rows as fp16, int8, int4 ...")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (k-means start, hash).")] = 0,
    schema: SchemaOpt = None,
    on_bad_line: BadLineOpt = "skip",
    split: SplitOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Saec: cluster similar values of each field into shared rows; write model.pt and report.json."""
    from sharkrec.cluster import run_cluster
    from sharkrec.prune.run import fine_tune_config
    from sharkrec.report import print_metrics

    _threads(threads)
    bundle, prepared = _load_with_model(model, fmt, data, schema, on_bad_line, split)
    tune = None if fine_tune_steps == 0 else fine_tune_config(bundle, max_steps=fine_tune_steps, lr=fine_tune_lr)
    field_names = _names(fields)
    with hold_output(out, "cluster"):
        _, report = run_cluster(bundle, prepared, out, rows_ratio=rows_ratio, target_bytes=target_bytes,
                                method=method, metric=metric, head_share=head_share,
                                fields=None if field_names is None else tuple(field_names), seed=seed,
                                fine_tune=tune, quantize=quantize, progress=True)
    print_metrics(report)
    memory = report["memory"]
    typer.echo(f"rows {memory['rows_before']:,} -> {memory['cluster_rows']:,} ({memory['rows_compression']:.1f}x); "
               f"bytes {memory['embedding_bytes_before']:,} -> {memory['bytes_map_folded_into_vocabulary']:,} (map in "
               f"vocabulary) / {memory['bytes_map_as_index']:,} (map as index); clustering "
               f"{report['clustering']['cluster_seconds']:.2f}s")
    typer.echo(f"wrote {out / 'model.pt'} and {out / 'report.json'}")


@app.command()
def export(
    model: Annotated[Path, typer.Option("--model", help="model.pt from 'sharkrec train', 'prune' or 'cluster'.")],
    out: Annotated[Path, typer.Option("--out", help="Artifact directory to write (replaced if it is an artifact).")],
) -> None:
    """Write a model as a serving artifact: safetensors + manifest, rows in their stored precision."""
    from sharkrec.export import save_artifact
    from sharkrec.train.checkpoint import load_model

    bundle = load_model(model)
    manifest = save_artifact(bundle, None, None, out)
    memory = manifest.get("memory", {})
    key_slots = f", key -> slot arrays {memory['key_slot_bytes']:,} bytes" if memory.get("key_slot_bytes") else ""
    typer.echo(f"wrote artifact {out} (embedding payload {memory.get('payload_bytes', 0):,} bytes{key_slots})")


@app.command()
def predict(
    model: Annotated[
        Path, typer.Option("--model", help="Artifact directory (or the folder 'sharkrec compress' wrote).")
    ],
    input_path: Annotated[Path, typer.Option("--input", help="Raw rows in the training format.")],
    output: Annotated[Path, typer.Option("--output", help="Scores TSV: input line number, one column per task.")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="criteo, libfm, csv, tsv (default: the artifact's).")
    ] = None,
    on_bad_line: BadLineOpt = "skip",
    threads: ThreadsOpt = None,
) -> None:
    """Score a raw input file with a compressed artifact (streamed; the output is written atomically)."""
    from sharkrec.export import predict_file

    _threads(threads)
    report = predict_file(model, input_path, output, fmt, on_bad_line=on_bad_line)
    typer.echo(f"scored {report.rows:,} rows; bad lines skipped: {report.bad_lines}; wrote {output}")


@app.command()
def serve(
    model: Annotated[Path, typer.Option("--model", help="Artifact directory (or the folder compress wrote).")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(
        help="Processes serving the artifact; its tables are memory-mapped once for all of them.")] = 1,
    server: Annotated[str, typer.Option(
        help="HTTP stack: uvicorn (httptools + uvloop), granian, or uvicorn-h11 (pure Python, for comparison).")
    ] = "uvicorn",
    max_wait_ms: Annotated[float, typer.Option(
        help="Longest a batch waits for requests already being read (the window adapts: 0 when idle).")] = 2.0,
    max_queue: Annotated[int, typer.Option(
        help="Requests that may wait for the model; the next one gets 503 with Retry-After.")] = 1024,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body; a larger one gets 413.")] = 16 << 20,
    access_log: Annotated[bool, typer.Option("--access-log", help="One JSON line per request on stderr.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(
        help="Where the memory-mapped serving cache of the tables is kept (default ~/.cache/sharkrec/serving).")
    ] = None,
    graceful_seconds: Annotated[int, typer.Option(
        help="On SIGTERM, how long requests in flight may take to finish before exit.")] = 30,
    threads: ThreadsOpt = None,
) -> None:
    """Serve an artifact over HTTP: POST /predict, the KServe v2 routes (/v2/...), GET /health, GET /metrics."""
    from sharkrec.serving import serve as run_server  # imports no torch: N workers get a small supervisor

    run_server(model, host=host, port=port, server=server, workers=workers, threads=threads, access_log=access_log,
               cache_dir=cache_dir, graceful_seconds=graceful_seconds, max_wait_ms=max_wait_ms, max_queue=max_queue,
               max_body_bytes=max_body_bytes)


def main() -> None:
    """Console entry point: user errors are one line on stderr and exit status 2."""
    try:
        app()
    except SharkrecError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("error: interrupted; nothing half-written was kept", err=True)
        sys.exit(130)
    except RuntimeError as exc:
        from sharkrec.train.trainer import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            typer.echo(f"error: {exc}", err=True)
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
