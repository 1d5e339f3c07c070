"""Field importance: which feature fields (embedding tables) a trained model needs (SHARK §3.1).

``field_importance(model, split, method=...)`` or ``METHODS[name](model).attribute(split)`` return a
:class:`FieldImportance`. Methods: the Taylor family (``taylor``, ``taylor-abs``, ``taylor2``,
``taylor-logit``; ``taylor2`` is the default), ``permutation``, ``exact`` (Eq. 1 by Monte Carlo), ``lasso``
and the learned field-selection baselines ``fscd``, ``autofield``, ``adafs`` and ``umec`` (gates trained on a copy).
"""

from sharkrec.importance.base import (
    DEFAULT_METHOD,
    METHODS,
    FieldImportance,
    ImportanceMethod,
    field_importance,
    get_method,
)
from sharkrec.importance.exact import Exact
from sharkrec.importance.gates import LearnedSelection, tune_learned
from sharkrec.importance.lasso import GroupLasso
from sharkrec.importance.learned import FSCD, UMEC, AdaFS, AutoField
from sharkrec.importance.permutation import Permutation
from sharkrec.importance.taylor import Taylor, Taylor2, TaylorAbs, TaylorLogit, taylor_family

__all__ = [
    "DEFAULT_METHOD",
    "FSCD",
    "METHODS",
    "UMEC",
    "AdaFS",
    "AutoField",
    "Exact",
    "FieldImportance",
    "GroupLasso",
    "ImportanceMethod",
    "LearnedSelection",
    "Permutation",
    "Taylor",
    "Taylor2",
    "TaylorAbs",
    "TaylorLogit",
    "field_importance",
    "get_method",
    "taylor_family",
    "tune_learned",
]
