"""The shapes corpus: a general-domain captioning corpus in plain lay language, offline.

Pictures of a large shape on a textured background with - usually - one small contrasting mark,
captioned as anyone would ("A dark oval with a small bright spot on its left side."). It plays the
part of the web image-caption data a real captioner is pretrained on: the tiny stand-ins of
:func:`medblip.models.pretrain_tiny` learn to look and to write here before they meet the radiology
benchmark (:mod:`medblip.data.synth`), whose vocabulary this corpus never uses.
"""

from __future__ import annotations

from medblip.data.shapes.generate import MANIFEST, SHAPES_VERSION, ShapesSummary, generate_shapes, read_meta

__all__ = ["MANIFEST", "SHAPES_VERSION", "ShapesSummary", "generate_shapes", "read_meta"]
