"""Built-in synthetic click logs with a known teacher: quick-start data, test data, ground truth.

A sample has ``num_sparse`` categorical fields ``C1..Cn``, ``num_dense`` count features
``I1..Im`` and one label ``click``. Fields are independent; each draws its value from a bounded
Zipf law ``P(rank r) ∝ (r + 1) ** -s`` (r = 0 is the hottest value) by inverse CDF, so value
frequencies are heavy-tailed like real logs. Every sparse field has a role:

- ``strong`` / ``weak``: the teacher reads the field with a large / small weight;
- ``noise``: the teacher ignores the field;
- ``redundant``: a deterministic function of a strong field (a bijection when it has as many
  values, otherwise a coarsening that keeps the source's hot values and folds its tail), so it
  carries the same (or nearly the same) information although the teacher never reads it.

The hidden teacher (all terms centred and scaled under the data distribution)::

    logit(x) = bias + Σ_f w_f · e_f[x_f]                         main effects, (K_f,) per field
                    + λ · Σ_{f<g interacting} <u_f[x_f], u_g[x_g]> dot-product interactions, (K_f, d)
                    + Σ_j v_j · (log1p(I_j) − mean_j) / std_j      dense linear term
    click ~ Bernoulli(sigmoid(logit))

``e_f`` has unit variance under the field's own Zipf law; values outside the ``head_mass`` most
probable share of the field get effects ``tail_effect_scale`` times smaller, so the signal is
carried mostly by frequent values (a model can learn it) while rare values still matter a little.
``bias`` is calibrated so the positive rate is ``base_ctr``.

Ground truth (:class:`GroundTruth`): the importance of a field is the exact expected increase of
the teacher's log-loss when the field's value is replaced by an independent draw from its
marginal — with labels integrated out this is ``E_x E_x' KL(Bern(p(x)) || Bern(p(x with x_f := x'_f)))``
(nats per sample), estimated on ``ground_truth_sample`` fresh rows with a Monte-Carlo standard
error. It is >= 0, exactly 0 for noise and redundant fields (the teacher reads the original of a
redundant field; a trained model may use either copy), and it orders fields by how much the
teacher's predictions depend on them. The dense features count as one field ``dense`` (the DLRM
bottom MLP turns them into one vector) and are resampled together.

Dense features are non-negative, zero-inflated log-normal counts; the prepared data holds
``log1p(count)``, which is what the Criteo reader's signed ``log1p`` gives for such counts.
Everything is vectorised numpy and deterministic for a seed; each part (roles, effects, the values
of each field, dense features, labels, the ground-truth sample) has its own random stream.
"""

from sharkrec.data.synthetic.config import FieldRole, SyntheticConfig, parse_synthetic_spec
from sharkrec.data.synthetic.generator import RawSample, SyntheticData, generate, simulate
from sharkrec.data.synthetic.teacher import FieldTruth, GroundTruth
from sharkrec.data.synthetic.tsv import write_criteo_shards, write_criteo_tsv

# importable as before the split, outside __all__: the column names, and helpers the tests reach for
from sharkrec.data.synthetic.generator import LABEL_NAME as LABEL_NAME  # isort: skip
from sharkrec.data.synthetic.teacher import DENSE_FIELD as DENSE_FIELD  # isort: skip
from sharkrec.data.synthetic.generator import _simulate as _simulate  # isort: skip
from sharkrec.data.synthetic.teacher import _log_counts as _log_counts  # isort: skip

__all__ = [
    "FieldRole",
    "FieldTruth",
    "GroundTruth",
    "RawSample",
    "SyntheticConfig",
    "SyntheticData",
    "generate",
    "parse_synthetic_spec",
    "simulate",
    "write_criteo_shards",
    "write_criteo_tsv",
]
