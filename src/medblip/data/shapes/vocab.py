"""The plain-language vocabulary of the shapes corpus: everything a caption can say.

The corpus stands in for the general-domain image-caption data a real captioner is pretrained on
(COCO, web alt-texts), so it must not speak radiology: no modality, body region, finding or
radiological appearance word (the tests check it against the clinical lexicon and the synthetic
benchmark's vocabulary). What it shares with radiology captions is plain English about what a
picture shows: brightness, texture, shape, size and where something is.

Side convention: *viewer's* sides. ``left`` is the image's left, as anyone would say of a picture
(the radiology benchmark names the patient's side, which is mirrored; learning that is fine-tuning's
job, as for a real captioner).
"""

from __future__ import annotations

#: Grey levels of the brightness words (0 black, 1 white).
LEVELS: dict[str, float] = {"black": 0.04, "dark": 0.26, "grey": 0.5, "light": 0.74, "white": 0.96}

#: Background / fill textures.
TEXTURES: tuple[str, ...] = ("plain", "grainy", "cloudy", "striped", "speckled", "mottled")

#: Large shapes (the picture's subject).
SHAPES: tuple[str, ...] = ("oval", "circle", "square", "rectangle", "triangle", "diamond", "donut", "blob",
                           "hexagon", "half-moon")

#: Small marks on or beside the subject.
MARKS: tuple[str, ...] = ("spot", "hoop", "square", "bar", "cross", "triangle", "star")
#: Smallest radius of each kind, in pixels at 64 px: below it the kind cannot be told from a spot.
MARK_MIN_RADIUS: dict[str, float] = {"spot": 1.2, "bar": 2.5, "hoop": 3.5, "cross": 3.5, "square": 4.0,
                                     "triangle": 4.5, "star": 5.0}

#: Mark size words by diameter in pixels at 64 px (scaled with the image size).
MARK_SIZES: tuple[tuple[float, str], ...] = ((4.0, "tiny"), (8.0, "small"), (1e9, "large"))

#: Brightness words of marks (relative to what they sit on).
MARK_BRIGHT: tuple[str, ...] = ("bright", "white")
MARK_DARK: tuple[str, ...] = ("dark", "black")

SIDES: tuple[str, ...] = ("left", "right")
NO_MARK = "none"
FAINT_RATE = 0.3  # share of marks drawn in low contrast ("a small faint dark spot")
MARK_RATE = 0.78  # share of pictures with a mark (the radiology benchmark's finding rate)
#: share of pictures with two marks: telling two marks apart is what teaches a captioner to look at the
#: one it is describing (attention that points), not merely to notice "something bright on the left"
TWO_MARK_RATE = 0.3
SIMPLE_RATE = 0.35  # share of easy pictures (see scene.sample_scene)
