"""sharkrec: compress the embedding layer of recommendation models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sharkrec.errors import SharkrecError

if TYPE_CHECKING:
    from sharkrec.export.engine import ServingModel

__all__ = ["SharkrecError", "__version__", "load"]
__version__ = "0.1.0"


def load(path: Any, **options: Any) -> ServingModel | Any:
    """The inference model of an artifact directory (see :func:`sharkrec.export.load_artifact`): a
    :class:`ServingModel` for sharkrec's DLRM, a ``UserServingModel`` (called like the user's model) for a
    user model's artifact (``sharkrec.export.save_user_artifact``).

    Imported lazily so ``import sharkrec`` stays light (no torch until a model is loaded).
    """
    from sharkrec.export.artifact import load_artifact

    return load_artifact(path, **options)
