"""Score a saved model's fields, write ``report.json`` and a bar chart: the library behind ``sharkrec importance``."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sharkrec import distributed
from sharkrec.data.dataset import PreparedData
from sharkrec.errors import ConfigError
from sharkrec.importance.base import FieldImportance, field_importance, get_method
from sharkrec.importance.gates import LearnedSelection
from sharkrec.io import atomic_save, write_json
from sharkrec.model.dlrm import DLRM
from sharkrec.train.checkpoint import ModelBundle

REPORT_FILE = "report.json"
CHART_FILE = "importance.png"


def run_importance(bundle: ModelBundle, data: PreparedData, method: str = "default", out_dir: str | Path | None = None,
                   *, split: str = "valid", batch_size: int = 4096, max_samples: int | None = None,
                   repeats: int | None = None, fields: Sequence[str] | None = None, seed: int = 0,
                   shard: str | None = None) -> dict[str, Any]:
    """Score every field of ``bundle.model`` on ``data.<split>``; with ``out_dir`` write report.json and a PNG.

    ``repeats`` is passed to methods that repeat (permutation: shuffles T); others reject it. The learned
    selection methods (fscd, autofield, adafs, umec) also get ``data.train``: their weights (and single-level
    gates) fit on it, the scored split is their validation level.
    ``shard`` (under torchrun): score with the tables sharded across the ranks by TorchRec
    (:func:`sharkrec.train.sharded.field_scores`; taylor, taylor-abs or taylor2; default taylor2).
    Nothing is written unless scoring succeeded.
    """
    from sharkrec.prune.loop import check_model_matches

    started = time.perf_counter()
    model = bundle.model
    if not isinstance(model, DLRM):
        raise ConfigError(f"cannot score a {type(model).__name__}; sharkrec scores DLRM models")
    check_model_matches(model, data)
    scored = data.split(split)
    if len(scored) == 0:
        raise ConfigError(f"the {split} split is empty; score on a split with samples (--score-split)")
    options: dict[str, Any] = {"repeats": repeats} if repeats is not None else {}
    if issubclass(get_method(method), LearnedSelection):
        options["train"] = data.train
    sharding: dict[str, Any] | None = None
    if shard is not None:
        from sharkrec.train.sharded import field_scores, shard_trained

        if max_samples is not None or repeats is not None or fields:
            raise ConfigError("--shard scores every field on the whole split; drop --max-samples, --repeats and "
                              "--fields")
        sharded = shard_trained(model, shard)
        result = field_scores(sharded, scored, batch_size=batch_size,
                              method="taylor2" if method == "default" else method)
        sharding = {"kind": shard, "tables": sharded.sharding(), "memory": sharded.memory()}
    else:
        result = field_importance(model, scored, method, batch_size=batch_size, max_samples=max_samples,
                                  fields=fields, seed=seed, **options)
    report = {"command": "importance", **_finite(result.to_dict()), "importance_seconds": result.seconds,
              "split": split, "batch_size": batch_size}
    if sharding is not None:
        report["sharding"] = sharding
    report["seconds"] = time.perf_counter() - started
    if out_dir is not None and distributed.is_main():  # under torchrun every rank holds the scores
        out = Path(out_dir)
        save_bar_chart(result, out / CHART_FILE)
        write_json(out / REPORT_FILE, report)
    distributed.barrier()  # other ranks return once the files exist
    return report


def save_bar_chart(result: FieldImportance, path: str | Path) -> None:
    """A horizontal bar per field (most important on top), error bars = the standard error, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.ranking())[::-1]
    index = [result.field_names.index(n) for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(names) + 1.5))
    errors = result.std[index]
    ax.barh(names, result.scores[index], xerr=None if all(math.isnan(e) for e in errors) else errors,
            color="#4c72b0")
    ax.set_xlabel(f"{result.method} score (expected loss increase per sample)")
    ax.set_title(f"field importance ({result.method}, {result.samples:,} samples)")
    fig.tight_layout()
    try:
        atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def print_importance(report: dict[str, Any], console: Console | None = None) -> None:
    """A ranked table of the fields' scores."""
    console = console or Console()
    table = Table(title=f"field importance ({report['method']}, {report['samples']:,} samples, "
                        f"{report['importance_seconds']:.2f} s)")
    for column in ("rank", "field", "score", "std error"):
        table.add_column(column, justify="left" if column == "field" else "right")
    for rank, name in enumerate(report["ranking"], start=1):
        score, std = report["scores"][name], report["std"][name]
        table.add_row(str(rank), name, "-" if score is None else f"{score:.6g}", "n/a" if std is None else f"{std:.3g}")
    console.print(table)
    how = report.get("std_method", "bootstrap")
    console.print("std error: bootstrap over blocks of the scored samples" if how == "bootstrap"
                  else f"std error: {how}")


def _finite(value: Any) -> Any:
    """NaN (unscored fields) → None, so report.json is strict JSON."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
