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

__all__ = [
    "ConceptOutputs",
    "active_per_image",
    "agreement_matrix",
    "always_on",
    "collect",
    "concept_metrics",
    "flip_rate",
    "match_concepts",
    "never_on",
    "saturation",
    "seed_flip_rate",
]
