"""F-Permutation pruning (SHARK §3.1.2-3.1.4, Algorithm 1): remove the weakest embedding tables.

``prune(model, data, method=..., target_memory=R)`` returns a :class:`PruneResult` (pruned model,
:class:`PruningPlan`, per-step history). A removed field's table is replaced by a constant vector
E[v_i] inside a :class:`PrunedEmbedding`, so the network keeps its shape and the field is never read.
"""

from sharkrec.prune.embedding import PrunedEmbedding
from sharkrec.prune.loop import DEFAULT_FINE_TUNE, PruneConfig, PruneResult, check_model_matches, prune
from sharkrec.prune.plan import PruningPlan, apply_plan, field_means, removable_fields, remove_fields

__all__ = [
    "DEFAULT_FINE_TUNE",
    "PruneConfig",
    "PruneResult",
    "PrunedEmbedding",
    "PruningPlan",
    "apply_plan",
    "check_model_matches",
    "field_means",
    "prune",
    "removable_fields",
    "remove_fields",
]
