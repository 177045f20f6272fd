"""Records, loaders (ROCO, ROCOv2, Hugging Face exports, manifests), images, captions, statistics.

The synthetic benchmark lives in the ``medblip.data.synth`` subpackage (imported on its own).
"""

from __future__ import annotations

from medblip.data.captions import CaptionOptions, normalize_caption, remove_panel_markers
from medblip.data.images import DEFAULT_MAX_PIXELS, ImageInfo, load_image, probe_image
from medblip.data.loader import FORMATS, detect_format, load_dataset
from medblip.data.records import SPLITS, Dataset, LoadReport, Record, canonical_split

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "SPLITS",
    "CaptionOptions",
    "Dataset",
    "ImageInfo",
    "LoadReport",
    "Record",
    "canonical_split",
    "detect_format",
    "load_dataset",
    "load_image",
    "normalize_caption",
    "probe_image",
    "remove_panel_markers",
]
