"""Caption normalisation options and panel-marker removal."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from medblip.data import CaptionOptions, normalize_caption, remove_panel_markers
from medblip.data.captions import iter_text_lines


def test_default_options_tidy_but_keep_wording():
    text = "  Axial\tCT  of the\n chest (arrow).  "
    assert normalize_caption(text) == "Axial CT of the chest (arrow)."


def test_nfkc_folds_compatibility_characters():
    # Full-width digits, the "fi" ligature and a no-break space are common in PDF-extracted captions.
    assert normalize_caption("ﬁnding of ２ cm\u00a0mass") == "finding of 2 cm mass"
    assert normalize_caption("ﬁnding", CaptionOptions(nfkc=False)) == "ﬁnding"


def test_lowercase_and_disabled_steps():
    assert normalize_caption("MRI Brain", CaptionOptions(lowercase=True)) == "mri brain"
    raw = "  a  b "
    assert normalize_caption(raw, CaptionOptions(strip=False, collapse_whitespace=False)) == raw
    assert normalize_caption(raw, CaptionOptions(strip=False)) == " a b "


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Axial CT showing a mass (arrow).", "Axial CT showing a mass."),
        ("(A) Axial and (B) coronal T2 images.", "Axial and coronal T2 images."),
        ("(a, b) Lesions (white arrowheads) and cyst (*).", "Lesions and cyst."),
        ("CT (A-C) and MRI (D and E): mass (arrows).", "CT and MRI: mass."),
        ("Late arterial phase. (A) \u2013 venous drainage, (B) \u2013 feeding vessel.",
         "Late arterial phase. venous drainage, feeding vessel."),
        ("Fluid collection (asterisk) near the (arrowhead) graft.", "Fluid collection near the graft."),
    ],
)
def test_panel_markers_removed(text, expected):
    assert normalize_caption(text, CaptionOptions(remove_panel_markers=True)) == expected


@pytest.mark.parametrize("text", [
    "Computed tomography (CT) of the chest.",
    "Mass in the liver (n = 5).",
    "Chest radiograph (PA view).",
    "Follow-up after 3 months (2019).",
])
def test_non_marker_parentheses_are_kept(text):
    assert remove_panel_markers(text) == text


def test_caption_of_only_markers_becomes_empty():
    assert normalize_caption(" (A) (arrow) ", CaptionOptions(remove_panel_markers=True)) == ""


def test_options_are_validated_and_frozen():
    with pytest.raises(ValidationError):
        CaptionOptions(lowercas=True)  # a typo must not be silently ignored
    opts = CaptionOptions()
    with pytest.raises(ValidationError):
        opts.lowercase = True


def test_iter_text_lines_flags_only_bad_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbfline one\r\nbad \xff\xfe here\nthird \xc3\xa9\n")
    lines = list(iter_text_lines(path))
    assert [(line.lineno, line.bad_utf8) for line in lines] == [(1, False), (2, True), (3, False)]
    assert lines[0].text == "line one"  # BOM and CR removed
    assert lines[1].text == "bad \ufffd\ufffd here"
    assert lines[2].text == "third \u00e9"
