"""Checkpoints of a compress run, so an interrupted run resumes where it stopped.

The folder holds ``search.json`` (the settings' fingerprint, the ranked predictions and the entry of
every finished training) and ``candidate_<k>.pt`` (the k-th trained model). Every file is written
atomically; a resume with different settings or a different model is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sharkrec import distributed
from sharkrec.compress.search import Candidate
from sharkrec.data.dataset import PreparedData
from sharkrec.errors import CheckpointError
from sharkrec.io import read_json, write_json
from sharkrec.model.dlrm import DLRM
from sharkrec.train.checkpoint import load_model, save_model

SEARCH_FILE = "search.json"


class CompressState:
    """Saved progress of one compress run in ``folder`` (created on first save)."""

    def __init__(self, folder: str | Path, fingerprint: dict[str, Any], *, resume: bool) -> None:
        self.folder = Path(folder)
        self.fingerprint = _digest(fingerprint)
        self.payload: dict[str, Any] = {"fingerprint": self.fingerprint, "predictions": None, "trained": []}
        path = self.folder / SEARCH_FILE
        if resume and path.is_file():
            saved = read_json(path, "compress state", CheckpointError, "delete the folder to start over")
            if saved.get("fingerprint") != self.fingerprint:
                raise CheckpointError(
                    f"{path} belongs to a compress run with other settings, model or data; "
                    "resume with the same command, or drop --resume to start over"
                )
            self.payload = saved
        elif resume:
            raise CheckpointError(f"nothing to resume: {path} does not exist; run without --resume first")

    def predictions(self) -> list[dict[str, Any]] | None:
        return self.payload["predictions"]

    def save_predictions(self, predictions: list[dict[str, Any]]) -> None:
        self.payload["predictions"] = predictions
        self._write()

    def trained(self) -> list[dict[str, Any]]:
        return list(self.payload["trained"])

    def load_trained(self, k: int) -> DLRM:
        model = load_model(self.folder / f"candidate_{k}.pt").model
        if not isinstance(model, DLRM):
            raise CheckpointError(f"candidate_{k}.pt does not hold a DLRM; delete the folder to start over")
        return model.eval()

    def save_trained(self, k: int, model: DLRM, entry: dict[str, Any], data: PreparedData) -> None:
        if distributed.is_main():
            save_model(self.folder / f"candidate_{k}.pt", model, data.schema, data.vocabularies,
                       info={"entry": entry})
        self.payload["trained"].append(entry)
        self._write()

    def _write(self) -> None:
        """Under torchrun every rank holds the same state; rank 0 writes it, the others wait for the file."""
        if distributed.is_main():
            write_json(self.folder / SEARCH_FILE, self.payload)
        distributed.barrier()


def candidate_from_dict(payload: dict[str, Any]) -> Candidate:
    return Candidate(removed=tuple(payload["removed"]), quant_budget=payload["quant_budget"],
                     use_int4=bool(payload["use_int4"]), fp32_share=float(payload["fp32_share"]),
                     importance_removed=float(payload["importance_removed"]),
                     predicted_bytes=int(payload["predicted_bytes"]), tail_ratio=payload.get("tail_ratio"),
                     hot_share=float(payload.get("hot_share", 0.5)))


def _digest(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
