"""Model files: a trained model with the schema and vocabularies needed to encode new data.

A model file is one ``torch.save`` payload loaded with ``weights_only=True`` (no code runs on
load). It records a format name and version; loading checks both, and a truncated or corrupted
file gives a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sharkrec.data.schema import Schema
from sharkrec.data.vocab import Vocabulary
from sharkrec.errors import CheckpointError
from sharkrec.io import atomic_save

MODEL_FORMAT = "sharkrec-model"
MODEL_VERSION = 1
MODEL_FILE = "model.pt"


@dataclass
class ModelBundle:
    """A model plus what it needs to read raw data: schema and per-field vocabularies."""

    model: nn.Module
    schema: Schema
    vocabularies: dict[str, Vocabulary]
    info: dict[str, Any] = field(default_factory=dict)


def vocab_to_payload(vocab: Vocabulary) -> dict[str, Any]:
    keys = vocab.keys_
    return {
        "name": vocab.name,
        "min_count": vocab.min_count,
        "key_kind": "int" if np.issubdtype(keys.dtype, np.integer) else "str",
        "keys": torch.from_numpy(keys.astype(np.int64))
        if np.issubdtype(keys.dtype, np.integer)
        else [str(k) for k in keys],
        "counts": torch.from_numpy(vocab.counts_.astype(np.int64)),
        "positive_counts": torch.from_numpy(vocab.positive_counts_.astype(np.int64)),
    }


def vocab_from_payload(payload: dict[str, Any]) -> Vocabulary:
    keys = payload["keys"]
    keys_array = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys, dtype=object)
    return Vocabulary.from_dict(
        {
            "name": payload["name"],
            "min_count": payload["min_count"],
            "keys": keys_array,
            "counts": payload["counts"].numpy(),
            "positive_counts": payload["positive_counts"].numpy(),
        }
    )


def save_model(
    path: str | Path,
    model: nn.Module,
    schema: Schema,
    vocabularies: dict[str, Vocabulary],
    info: dict[str, Any] | None = None,
) -> None:
    """Write a model file atomically. ``model`` must have ``config.to_dict()`` (a DLRM)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise CheckpointError(f"cannot save a {type(model).__name__}: it has no config; save a sharkrec DLRM")
    payload = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "model_class": type(model).__name__,
        "model_config": config.to_dict(),
        "embedding_spec": json.dumps(embedding_spec(model)),
        "state_dict": model.state_dict(),
        "schema": schema.to_dict(),
        "vocabularies": {name: vocab_to_payload(v) for name, v in vocabularies.items()},
        "info": info or {},
    }
    atomic_save(path, lambda tmp: torch.save(payload, tmp))


def embedding_spec(model: nn.Module) -> dict[str, Any]:
    """The ``spec()`` of a model's embedding layer (how to rebuild it on load)."""
    from sharkrec.model.embedding import FieldEmbedding

    embedding = getattr(model, "embedding", None)
    if not isinstance(embedding, FieldEmbedding):
        raise CheckpointError(f"cannot save a {type(model).__name__}: it has no sharkrec embedding layer")
    return embedding.spec()


def load_torch_file(path: str | Path, what: str = "model file",
                    fix: str = "retrain or restore it from a backup") -> Any:
    """``torch.load`` with ``weights_only=True`` (no code runs), or one :class:`CheckpointError` line naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist; pass the model.pt written by 'sharkrec train'")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / corrupted zips
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{what} {str(path)!r} is corrupted or truncated ({reason}); {fix}") from None


def read_payload(
    path: str | Path, expected_format: str = MODEL_FORMAT, max_version: int = MODEL_VERSION
) -> dict[str, Any]:
    """Load and check a torch payload: exists, readable, right format, known version."""
    path = Path(path)
    payload = load_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        raise CheckpointError(f"{str(path)!r} is not a {expected_format} file; pass a file written by sharkrec")
    version = payload.get("version")
    if not isinstance(version, int) or version > max_version or version < 1:
        raise CheckpointError(
            f"{str(path)!r} has format version {version!r}, this sharkrec reads versions 1..{max_version}; "
            "upgrade sharkrec or re-export the model"
        )
    return payload


def model_file(path: str | Path) -> Path:
    """``path`` itself, or ``path/model.pt`` when ``path`` is the folder a command wrote (train, prune, compress)."""
    path = Path(path)
    if path.is_dir():
        if (path / MODEL_FILE).is_file():
            return path / MODEL_FILE
        raise CheckpointError(
            f"folder {str(path)!r} has no {MODEL_FILE}; pass the folder (or the model.pt) written by "
            "'sharkrec train', 'prune', 'cluster' or 'compress'"
        )
    return path


def load_model(path: str | Path) -> ModelBundle:
    """Read a model file written by :func:`save_model` (``path`` may be the run folder holding it)."""
    from sharkrec.model.dlrm import DLRM, DLRMConfig
    from sharkrec.model.embedding import embedding_from_spec

    path = model_file(path)
    payload = read_payload(path)
    try:
        config = DLRMConfig.from_dict(payload["model_config"])
        spec = payload.get("embedding_spec")
        model = DLRM(config, embedding_from_spec(json.loads(spec)) if spec else None)
        model.load_state_dict(payload["state_dict"])
        schema = Schema.from_dict(payload["schema"])
        vocabularies = {name: vocab_from_payload(v) for name, v in payload["vocabularies"].items()}
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        reason = " ".join(str(exc).split())[:300]  # one line, however long torch's message is
        raise CheckpointError(
            f"model file {str(path)!r} does not match this sharkrec's model layout ({reason}); "
            "re-train or re-save it with this version"
        ) from None
    model.eval()
    return ModelBundle(model=model, schema=schema, vocabularies=vocabularies, info=payload.get("info", {}))
