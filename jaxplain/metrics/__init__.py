"""Explanation-quality metrics as pure functions, batched over a leading pair axis ``N``.

Every metric returns ``[N]``; its direction and category are in :data:`METRICS`.

========================  ==============  ======  =====================================================
metric                    category        better  function
========================  ==============  ======  =====================================================
deletion_auc              faithfulness    lower   :func:`auc` of scores over ``step_masks(mode="deletion")``
insertion_auc             faithfulness    higher  :func:`auc` of scores over ``step_masks(mode="insertion")``
max_sensitivity           robustness      lower   :func:`max_sensitivity`, :func:`max_sensitivity_from`
completeness_error        completeness    lower   :func:`completeness_error` (signed: :func:`completeness_delta`)
contrastivity             contrastivity   higher  :func:`contrastivity`
randomisation_similarity  sanity          lower   :func:`randomisation_similarity` with :func:`randomise_layers`
validity                  counterfactual  higher  :func:`validity`
proximity                 counterfactual  lower   :func:`proximity`
sparsity                  counterfactual  lower   :func:`sparsity` (fraction of features changed)
diversity                 counterfactual  higher  :func:`diversity`
========================  ==============  ======  =====================================================

The arithmetic is kept apart from running models: faithfulness curves are built with :func:`step_masks`
and :func:`apply_masks`, scored by the caller, and reduced with :func:`auc`. The arithmetic functions are
jitted (their configuration arguments static), so an eager call compiles once per shape rather than once
per operation, and each also traces inside a caller's ``jax.jit``.
"""

from jaxplain.metrics.completeness import completeness_delta, completeness_error
from jaxplain.metrics.counterfactual import diversity, proximity, sparsity, validity
from jaxplain.metrics.faithfulness import apply_masks, auc, ranking, step_counts, step_masks
from jaxplain.metrics.info import CATEGORIES, METRICS, MetricInfo
from jaxplain.metrics.robustness import max_sensitivity, max_sensitivity_from, uniform_perturbations
from jaxplain.metrics.sanity import randomise_layers
from jaxplain.metrics.similarity import contrastivity, randomisation_similarity, rank, spearman

__all__ = [
    "CATEGORIES",
    "METRICS",
    "MetricInfo",
    "apply_masks",
    "auc",
    "completeness_delta",
    "completeness_error",
    "contrastivity",
    "diversity",
    "max_sensitivity",
    "max_sensitivity_from",
    "proximity",
    "randomisation_similarity",
    "randomise_layers",
    "rank",
    "ranking",
    "sparsity",
    "spearman",
    "step_counts",
    "step_masks",
    "uniform_perturbations",
    "validity",
]
