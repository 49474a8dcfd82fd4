"""What each explanation-quality metric measures, and which direction is better."""

from __future__ import annotations

import dataclasses

CATEGORIES = ("faithfulness", "robustness", "completeness", "contrastivity", "sanity", "counterfactual")


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """A metric's name, its direction (``higher_is_better``), its category and what it measures."""

    name: str
    higher_is_better: bool
    category: str
    description: str

    def __post_init__(self):
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown metric category {self.category!r}; expected one of {CATEGORIES}")


def _info(name: str, higher_is_better: bool, category: str, description: str) -> tuple[str, MetricInfo]:
    return name, MetricInfo(name, higher_is_better, category, description)


METRICS: dict[str, MetricInfo] = dict(
    [
        _info(
            "deletion_auc",
            False,
            "faithfulness",
            "Area under the model's score as the most important features are replaced by the baseline first; "
            "a faithful attribution makes the score drop fast.",
        ),
        _info(
            "insertion_auc",
            True,
            "faithfulness",
            "Area under the model's score as the most important features are inserted into the baseline first; "
            "a faithful attribution makes the score rise fast.",
        ),
        _info(
            "max_sensitivity",
            False,
            "robustness",
            "Largest change of the explanation (L2, relative to its norm) over small uniform perturbations of the "
            "input.",
        ),
        _info(
            "completeness_error",
            False,
            "completeness",
            "|sum of attributions − (f(input) − f(baseline))|: how far the attributions are from accounting for "
            "the change of the score.",
        ),
        _info(
            "contrastivity",
            True,
            "contrastivity",
            "(1 − Spearman ρ) / 2 between the 'A rather than B' explanation and the plain 'A' explanation; higher "
            "means the contrast changes what is highlighted.",
        ),
        _info(
            "randomisation_similarity",
            False,
            "sanity",
            "Spearman ρ between the attributions of the trained model and of a model with randomised parameters; "
            "a method that depends on the weights scores low.",
        ),
        _info(
            "validity",
            True,
            "counterfactual",
            "Fraction of the returned counterfactuals that reach the wanted outcome.",
        ),
        _info(
            "proximity",
            False,
            "counterfactual",
            "Mean Euclidean distance of the counterfactuals to the original.",
        ),
        _info(
            "sparsity",
            False,
            "counterfactual",
            "Mean fraction of input features a counterfactual changes; lower means fewer features changed.",
        ),
        _info(
            "diversity",
            True,
            "counterfactual",
            "Mean pairwise Euclidean distance among the counterfactuals of one input.",
        ),
    ]
)
