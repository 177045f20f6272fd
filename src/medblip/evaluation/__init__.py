"""Evaluation: COCO caption metrics, clinical correctness, degeneration diagnostics, statistics.

Entry points: :func:`score_predictions` (one system), :func:`compare_systems` / :func:`paired_test`
(two systems on the same images), :func:`extract_concepts` (the clinical extractor),
:func:`bootstrap_ci` / :func:`paired_bootstrap` / :func:`approximate_randomization` (statistics).
"""

from medblip.evaluation.caption_metrics import COCO_METRICS
from medblip.evaluation.clinical import Concepts, Finding, extract_concepts, load_lexicon, normalize_modality
from medblip.evaluation.clinical.metrics import CLINICAL_METRICS
from medblip.evaluation.degeneration import DegenerationReport, degeneration_report
from medblip.evaluation.scoring import (
    METRICS_JSON,
    METRICS_MD,
    compare_systems,
    metrics_markdown,
    paired_test,
    parse_rows,
    read_predictions,
    score_predictions,
    write_metrics,
)
from medblip.evaluation.statistics import (
    AdditiveMetric,
    ConfidenceInterval,
    PairedResult,
    Resamplable,
    approximate_randomization,
    bootstrap_ci,
    bootstrap_cis,
    paired_bootstrap,
)
from medblip.evaluation.tokenization import imageclef_preprocess, java_available, simple_tokenize

__all__ = [
    "CLINICAL_METRICS", "COCO_METRICS", "METRICS_JSON", "METRICS_MD", "AdditiveMetric", "Concepts",
    "ConfidenceInterval", "DegenerationReport", "Finding", "PairedResult", "Resamplable",
    "approximate_randomization", "bootstrap_ci", "bootstrap_cis", "compare_systems", "degeneration_report",
    "extract_concepts", "imageclef_preprocess", "java_available", "load_lexicon", "metrics_markdown",
    "normalize_modality", "paired_bootstrap", "paired_test", "parse_rows", "read_predictions",
    "score_predictions", "simple_tokenize", "write_metrics",
]
