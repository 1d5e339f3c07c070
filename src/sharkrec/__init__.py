"""sharkrec: compress the embedding layer of recommendation models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sharkrec.errors import SharkrecError

if TYPE_CHECKING:
    from torch import nn

    from sharkrec.export.engine import ServingModel
    from sharkrec.model.fieldmap import FieldMap
    from sharkrec.model.wrapped import FieldModel

__all__ = ["SharkrecError", "__version__", "fields", "load", "wrap"]
__version__ = "0.1.0"


def load(path: Any, **options: Any) -> ServingModel | Any:
    """The inference model of an artifact directory (see :func:`sharkrec.export.load_artifact`): a
    :class:`ServingModel` for sharkrec's DLRM, a ``UserServingModel`` (called like the user's model) for a
    user model's artifact (``sharkrec.export.save_user_artifact``).

    Imported lazily so ``import sharkrec`` stays light (no torch until a model is loaded).
    """
    from sharkrec.export.artifact import load_artifact

    return load_artifact(path, **options)


def fields(model: nn.Module, example: Any, **options: Any) -> FieldMap:
    """The field map of any PyTorch model: its embedding lookups, found by running ``model`` once on ``example``.

    See :func:`sharkrec.model.fieldmap.find_fields` (``modules=``, ``shared=``, ``names=``).
    """
    from sharkrec.model.fieldmap import find_fields

    return find_fields(model, example, **options)


def wrap(model: nn.Module, field_map: FieldMap | None = None, example: Any = None, **options: Any) -> FieldModel:
    """``model`` on sharkrec's field path (a copy; the model is not changed): see
    :class:`sharkrec.model.wrapped.FieldModel`. Give a field map, or an ``example`` to find one."""
    from sharkrec.errors import ConfigError
    from sharkrec.model.fieldmap import find_fields
    from sharkrec.model.wrapped import FieldModel

    if field_map is None:
        if example is None:
            raise ConfigError("wrap needs a field map or an example batch to find one: wrap(model, example=inputs)")
        field_map = find_fields(model, example)
    return FieldModel.wrap(model, field_map, **options)
