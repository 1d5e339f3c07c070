"""The one fine-tune a compression stage runs after changing a trained model (prune step, compress candidate,
Saec, the TorchRec adapter): settings written once here, every stage imports them.

A stage that knows how the model was trained (a saved model's ``train_config``) takes that optimizer, batch
size and regularisation at ``LR_SCALE`` x its learning rate (:func:`fine_tune_config`); otherwise it starts
from :data:`DEFAULT_FINE_TUNE`. Stages only choose how long to train (``epochs``, ``patience``, ``max_steps``).
Every stage runs it through :func:`~sharkrec.train.trainer.fit_unless_worse`, which undoes a fine-tune that
raised the validation log loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sharkrec.train.optim import OptimizerKind
from sharkrec.train.trainer import TrainConfig

#: fine-tune lr as a share of the model's training lr. The optimizer state starts fresh on a converged model:
#: at 0.1 x a fresh Adagrad state raised the validation log loss of every compressed Frappe and MovieLens
#: candidate (the fine-tune was undone); 0.01 x was kept on MovieLens
LR_SCALE = 0.01

#: the fine-tune when the model's training settings are unknown: one gentle Adagrad pass
DEFAULT_FINE_TUNE = TrainConfig(optimizer=OptimizerKind.ADAGRAD, lr=0.01, epochs=1, patience=0, progress=False)

#: settings taken over from the model's own training run
INHERITED = ("optimizer", "batch_size", "embedding_l2", "weight_decay", "task_weights")


def fine_tune_config(train_config: Mapping[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """:data:`DEFAULT_FINE_TUNE` with the model's optimizer, batch size and regularisation from
    ``train_config`` (a saved model's ``TrainConfig.to_dict()``), its lr and embedding lr scaled by
    :data:`LR_SCALE`, then ``overrides`` that are not ``None`` (``epochs``, ``max_steps``, ``lr`` ...)."""
    saved = dict(train_config or {})
    settings = {key: saved[key] for key in INHERITED if saved.get(key) is not None}
    for key in ("lr", "embedding_lr"):
        if saved.get(key) is not None:
            settings[key] = LR_SCALE * float(saved[key])
    explicit = {key: value for key, value in overrides.items() if value is not None}
    if "lr" in explicit and "embedding_lr" not in explicit:
        settings.pop("embedding_lr", None)  # an explicit lr is the tables' lr too
    settings.update(explicit)
    if settings.get("task_weights") is not None:
        settings["task_weights"] = tuple(settings["task_weights"])
    return dataclasses.replace(DEFAULT_FINE_TUNE, **settings)
