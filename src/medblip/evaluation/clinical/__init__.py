"""Clinical correctness without downloaded weights: a curated radiology lexicon and a rule-based
extractor with negation and uncertainty handling, plus the metrics built on it."""

from medblip.evaluation.clinical.extractor import (
    TERM_CATEGORIES,
    Concepts,
    Finding,
    extract_concepts,
    normalize_modality,
    term_spans,
)
from medblip.evaluation.clinical.lexicon import Lexicon, default_lexicon_path, load_lexicon

__all__ = ["TERM_CATEGORIES", "Concepts", "Finding", "Lexicon", "default_lexicon_path", "extract_concepts",
           "load_lexicon", "normalize_modality", "term_spans"]
