"""Controlled vocabulary of the synthetic benchmark.

Everything a caption can say is listed here, so that the clinical concept extractor and its tests
can check their own term lists against exactly what the generator writes.

Side convention (radiological): every image is displayed as if facing the patient (axial slices
viewed from the feet, PA radiographs, coronal MIPs, transverse ultrasound). The PATIENT'S RIGHT is
on the IMAGE'S LEFT. ``side`` in ``facts.jsonl`` is always the patient's side; a ``right`` finding
therefore has its bounding box in the left half of the image.
"""

from __future__ import annotations

MODALITIES: tuple[str, ...] = ("ct", "mri", "xray", "ultrasound", "angiography", "pet")

# Terms that name each modality in captions (case-insensitive except the upper-case abbreviations,
# which must be matched case-sensitively: "US" is a modality, "us" is a pronoun).
MODALITY_TERMS: dict[str, tuple[str, ...]] = {
    "ct": ("CT", "computed tomography"),
    "mri": ("MRI", "MR", "magnetic resonance"),
    "xray": ("radiograph", "X-ray", "radiography"),
    "ultrasound": ("ultrasound", "sonography", "US", "ultrasonography", "sonogram"),
    "angiography": ("angiography", "angiogram", "DSA"),
    "pet": ("PET", "positron emission tomography"),
}

# Real UMLS CUIs, as used in ROCOv2 concept files.
MODALITY_CUIS: dict[str, str] = {
    "ct": "C0040405",  # X-Ray Computed Tomography
    "mri": "C0024485",  # Magnetic Resonance Imaging
    "xray": "C1306645",  # Plain x-ray
    "ultrasound": "C0041618",  # Ultrasonography
    "angiography": "C0002978",  # Angiogram
    "pet": "C0032743",  # Positron-Emission Tomography
}

REGIONS: tuple[str, ...] = ("chest", "abdomen", "head", "pelvis", "neck", "whole_body")

REGION_TERMS: dict[str, tuple[str, ...]] = {
    "chest": ("chest", "thorax", "thoracic"),
    "abdomen": ("abdomen", "abdominal"),
    "head": ("head", "brain", "cerebral", "intracranial"),
    "pelvis": ("pelvis", "pelvic"),
    "neck": ("neck", "thyroid"),
    "whole_body": ("whole-body", "whole body"),
}

REGION_CUIS: dict[str, str] = {
    "chest": "C0817096",  # Chest
    "abdomen": "C0000726",  # Abdomen
    "head": "C0018670",  # Head
    "pelvis": "C0030797",  # Pelvis
    "neck": "C0027530",  # Neck
}

# Regions each modality images, with sampling weights.
MODALITY_REGIONS: dict[str, dict[str, float]] = {
    "ct": {"chest": 0.4, "abdomen": 0.35, "head": 0.25},
    "mri": {"head": 1.0},
    "xray": {"chest": 0.7, "pelvis": 0.3},
    "ultrasound": {"neck": 0.5, "pelvis": 0.5},
    "angiography": {"head": 1.0},
    "pet": {"whole_body": 1.0},
}

NO_FINDING = "none"
FINDINGS: tuple[str, ...] = ("mass", "nodule", "effusion", "fracture", "cyst", "aneurysm")

# Words the captions use for each finding. No term is a substring of another finding's term, so a
# caption names exactly one finding family.
FINDING_TERMS: dict[str, tuple[str, ...]] = {
    "mass": ("mass", "lesion", "tumour", "tumor"),
    "nodule": ("nodule",),
    "effusion": ("effusion",),
    "fracture": ("fracture",),
    "cyst": ("cyst",),
    "aneurysm": ("aneurysm",),
}

FINDING_CUIS: dict[str, str] = {
    "mass": "C0577559",  # Mass of body structure
    "nodule": "C0028259",  # Nodule
    "effusion": "C0032227",  # Pleural effusion
    "fracture": "C0016658",  # Fracture
    "cyst": "C0010709",  # Cyst
    "aneurysm": "C0002940",  # Aneurysm
}

# Findings plausible for each (modality, region); ``none`` is sampled separately with NONE_RATE so
# that normal studies are equally frequent in every modality.
REGION_FINDINGS: dict[tuple[str, str], tuple[str, ...]] = {
    ("ct", "chest"): ("nodule", "mass", "effusion"),
    ("ct", "abdomen"): ("mass", "cyst"),
    ("ct", "head"): ("mass", "cyst", "fracture"),
    ("mri", "head"): ("mass", "cyst"),
    ("xray", "chest"): ("nodule", "mass", "effusion", "fracture"),
    ("xray", "pelvis"): ("fracture",),
    ("ultrasound", "neck"): ("nodule", "cyst"),
    ("ultrasound", "pelvis"): ("cyst", "mass"),
    ("angiography", "head"): ("aneurysm",),
    ("pet", "whole_body"): ("mass", "nodule"),
}
NONE_RATE = 0.22

SIDES: tuple[str, ...] = ("left", "right")
NO_SIDE = "none"

_LOBES = ("{side} frontal lobe", "{side} parietal lobe", "{side} temporal lobe", "{side} occipital lobe")
_LUNG_LOBES = ("{side} upper lobe", "{side} lower lobe")

# Anatomical sites per (modality, region, finding); "{side}" is the patient's side. Sites that
# exist on one side only are keyed by side.
LOCATIONS: dict[tuple[str, str, str], tuple[str, ...] | dict[str, tuple[str, ...]]] = {
    ("ct", "chest", "nodule"): _LUNG_LOBES,
    ("ct", "chest", "mass"): _LUNG_LOBES,
    ("ct", "chest", "effusion"): ("{side} hemithorax",),
    ("ct", "abdomen", "mass"): {"right": ("right lobe of the liver", "right kidney"), "left": ("left kidney",)},
    ("ct", "abdomen", "cyst"): {"right": ("right lobe of the liver", "right kidney"), "left": ("left kidney",)},
    ("ct", "head", "mass"): _LOBES,
    ("ct", "head", "cyst"): _LOBES,
    ("ct", "head", "fracture"): ("{side} parietal bone", "{side} frontal bone"),
    ("mri", "head", "mass"): _LOBES,
    ("mri", "head", "cyst"): _LOBES,
    ("xray", "chest", "nodule"): _LUNG_LOBES,
    ("xray", "chest", "mass"): _LUNG_LOBES,
    ("xray", "chest", "effusion"): ("{side} hemithorax",),
    ("xray", "chest", "fracture"): ("{side} clavicle",),
    ("xray", "pelvis", "fracture"): ("{side} femoral neck",),
    ("ultrasound", "neck", "nodule"): ("{side} thyroid lobe",),
    ("ultrasound", "neck", "cyst"): ("{side} thyroid lobe",),
    ("ultrasound", "pelvis", "cyst"): ("{side} ovary",),
    ("ultrasound", "pelvis", "mass"): ("{side} ovary",),
    ("angiography", "head", "aneurysm"): ("{side} middle cerebral artery", "{side} internal carotid artery"),
    ("pet", "whole_body", "mass"): _LUNG_LOBES,
    ("pet", "whole_body", "nodule"): _LUNG_LOBES,
}

# Acquisition techniques per (modality, region); captions and renderers both use them.
TECHNIQUES: dict[tuple[str, str], tuple[str, ...]] = {
    ("ct", "chest"): ("contrast-enhanced", "non-contrast"),
    ("ct", "abdomen"): ("contrast-enhanced",),
    ("ct", "head"): ("non-contrast",),
    ("mri", "head"): ("T1-weighted", "T2-weighted", "FLAIR", "contrast-enhanced T1-weighted"),
    ("xray", "chest"): ("PA",),
    ("xray", "pelvis"): ("AP",),
    ("ultrasound", "neck"): ("transverse",),
    ("ultrasound", "pelvis"): ("transverse",),
    ("angiography", "head"): ("DSA",),
    ("pet", "whole_body"): ("FDG",),
}

# Lesion diameter ranges in millimetres per (modality, finding); effusion is the fluid depth and
# fracture the length of the fracture line. Lower bounds keep lesions a few pixels wide at 64 px.
SIZE_RANGES_MM: dict[tuple[str, str], tuple[int, int]] = {
    ("ct", "nodule"): (12, 28),
    ("ct", "mass"): (30, 70),
    ("ct", "cyst"): (15, 50),
    ("ct", "effusion"): (25, 70),
    ("ct", "fracture"): (15, 35),
    ("mri", "mass"): (15, 50),
    ("mri", "cyst"): (12, 40),
    ("xray", "nodule"): (14, 29),
    ("xray", "mass"): (35, 80),
    ("xray", "effusion"): (30, 90),
    ("xray", "fracture"): (20, 35),
    ("ultrasound", "nodule"): (8, 25),
    ("ultrasound", "cyst"): (8, 50),
    ("ultrasound", "mass"): (20, 60),
    ("angiography", "aneurysm"): (8, 22),
    ("pet", "mass"): (30, 60),
    ("pet", "nodule"): (16, 29),
}

# Region-specific ranges that override SIZE_RANGES_MM (a thyroid lobe is small).
REGION_SIZE_RANGES_MM: dict[tuple[str, str, str], tuple[int, int]] = {
    ("ultrasound", "neck", "cyst"): (6, 25),
}

# Descriptive adjectives per (modality, region, finding) (effusions have none: they are graded); the renderer draws what the adjective
# says (hypo- vs hyper-dense, spiculated vs smooth), so a caption never contradicts its image.
APPEARANCES: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("ct", "chest", "nodule"): ("solid", "spiculated", "well-circumscribed"),
    ("ct", "chest", "mass"): ("spiculated", "lobulated"),
    ("ct", "abdomen", "mass"): ("hypodense", "heterogeneous"),
    ("ct", "abdomen", "cyst"): ("well-defined", "simple"),
    ("ct", "head", "mass"): ("hyperdense", "hypodense"),
    ("ct", "head", "cyst"): ("well-defined", "simple"),
    ("ct", "head", "fracture"): ("depressed", "displaced"),
    ("mri", "head", "mass"): ("hypointense", "hyperintense", "ring-enhancing"),  # set by the sequence
    ("mri", "head", "cyst"): ("well-defined", "simple"),
    ("xray", "chest", "nodule"): ("well-defined", "round"),
    ("xray", "chest", "mass"): ("lobulated", "ill-defined"),
    ("xray", "chest", "fracture"): ("displaced",),
    ("xray", "pelvis", "fracture"): ("displaced",),
    ("ultrasound", "neck", "nodule"): ("hypoechoic", "isoechoic"),
    ("ultrasound", "neck", "cyst"): ("anechoic", "simple"),
    ("ultrasound", "pelvis", "cyst"): ("anechoic", "simple"),
    ("ultrasound", "pelvis", "mass"): ("complex", "solid"),
    ("angiography", "head", "aneurysm"): ("saccular",),
    ("pet", "whole_body", "mass"): ("hypermetabolic", "FDG-avid"),
    ("pet", "whole_body", "nodule"): ("hypermetabolic", "FDG-avid"),
}

# On MRI the signal of a mass follows from the sequence, so its adjective is not sampled.
MRI_MASS_SIGNAL: dict[str, str] = {
    "T1-weighted": "hypointense",
    "T2-weighted": "hyperintense",
    "FLAIR": "hyperintense",
    "contrast-enhanced T1-weighted": "ring-enhancing",
}

EFFUSION_GRADES: tuple[tuple[int, str], ...] = ((40, "small"), (65, "moderate"), (10_000, "large"))

# Phrases that mark a normal study; every negative caption contains at least one of them and no
# positive caption contains any.
NEGATION_CUES: tuple[str, ...] = ("no", "without", "unremarkable", "normal", "negative for")

# Nominal width of the field of view in millimetres per (modality, region): the image width at
# zoom 1. Pixel spacing = FOV_MM / (size * zoom).
FOV_MM: dict[tuple[str, str], float] = {
    ("ct", "chest"): 380.0,
    ("ct", "abdomen"): 380.0,
    ("ct", "head"): 240.0,
    ("mri", "head"): 240.0,
    ("xray", "chest"): 430.0,
    ("xray", "pelvis"): 400.0,
    ("ultrasound", "neck"): 80.0,
    ("ultrasound", "pelvis"): 150.0,
    ("angiography", "head"): 200.0,
    ("pet", "whole_body"): 700.0,
}


def effusion_grade(size_mm: int) -> str:
    """Qualitative grade used in captions for an effusion of ``size_mm`` fluid depth."""
    for limit, grade in EFFUSION_GRADES:
        if size_mm < limit:
            return grade
    return EFFUSION_GRADES[-1][1]
