"""The metric-choosing options that ``score``, ``evaluate`` and ``ablation`` share (one wording, one parser).

``compare`` reads the same choices from its config's ``scoring:`` section.
"""

from __future__ import annotations

from typing import Any

METRICS_HELP = ("Comma-separated metric sets and metrics: coco, clinical (the default: coco,clinical), imageclef "
                "(the ImageCLEFmedical Caption set with its preprocessing: coco + rouge1, bertscore, bleurt, "
                "clipscore, refclipscore), or single ones: rouge1, bertscore, clipscore, refclipscore, bleurt.")
METRIC_MODEL_HELP = ("KEY=MODEL: the model of a model-based metric, a hub id or a local folder (repeatable). "
                     "Keys: bertscore (default microsoft/deberta-xlarge-mnli), clip (default "
                     "openai/clip-vit-base-patch32, for clipscore and refclipscore), bleurt (default "
                     "lucadiliello/BLEURT-20-D12, a PyTorch BLEURT checkpoint).")
IMAGECLEF_HELP = ("ImageCLEFmedical Caption text preprocessing (lower-case, digits -> 'number', no punctuation) "
                  "before the text metrics, for ROCOv2 comparability; implied by --metrics imageclef.")


def scoring_choice(metrics: str | None, metric_model: list[str] | None, imageclef: bool,
                   device: str | None = None) -> dict[str, Any]:
    """The options as :func:`medblip.evaluation.score_predictions` keywords, checked now so a typo fails
    before any captioning or model loading."""
    from medblip.evaluation.metric_sets import DEFAULT_METRICS, parse_model_options, select_metrics

    models = parse_model_options(metric_model)
    selection = select_metrics(metrics or ",".join(DEFAULT_METRICS), models, imageclef=imageclef)
    return {"metrics": list(selection.requested), "models": models, "imageclef": imageclef, "device": device}
