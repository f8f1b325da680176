"""Explanations of Implicit Concept Bottleneck Models: concept metrics and HTML reports."""

from .metrics import (
    ConceptOutputs,
    active_per_image,
    agreement_matrix,
    always_on,
    collect,
    concept_metrics,
    flip_rate,
    match_concepts,
    never_on,
    saturation,
    seed_flip_rate,
)
from .report import Report, build_report, explain_run

__all__ = [
    "ConceptOutputs",
    "Report",
    "active_per_image",
    "agreement_matrix",
    "always_on",
    "build_report",
    "collect",
    "concept_metrics",
    "explain_run",
    "flip_rate",
    "match_concepts",
    "never_on",
    "saturation",
    "seed_flip_rate",
]
