"""Write a prepared dataset's description (schema, vocabulary sizes, data report) to a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sharkrec.data.dataset import PreparedData
from sharkrec.io import write_json


def write_prepared(prepared: PreparedData, out: str | Path) -> dict[str, Any]:
    """``out/schema.json`` and ``out/report.json`` (rows per split, vocabulary sizes, bad lines)."""
    out = Path(out)
    prepared.schema.save(out / "schema.json")
    report: dict[str, Any] = {"command": "prepare", **{k: v for k, v in prepared.report.items()}}
    report["rows"] = {"train": len(prepared.train), "valid": len(prepared.valid), "test": len(prepared.test)}
    report["vocabulary_rows"] = prepared.cardinalities
    report["positive_rate"] = {name: float(prepared.train.labels[:, i].mean()) if len(prepared.train) else 0.0
                               for i, name in enumerate(prepared.schema.label_names)}
    write_json(out / "report.json", report)
    return report
