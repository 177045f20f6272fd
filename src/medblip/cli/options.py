"""Options that several commands share, spelled and explained once."""

from __future__ import annotations

MAX_PIXELS_HELP = ("Refuse images with more pixels than this (decompression-bomb guard; 0: no limit) "
                   "[default: 64,000,000, or $MEDBLIP_MAX_PIXELS].")
OVERWRITE_HELP = ("Write into a non-empty --out folder that is not an earlier output of this command "
                  "(files of the same names are replaced; other files are kept).")


def apply_max_pixels(max_pixels: int | None) -> None:
    """``--max-pixels N`` given: make it the limit of every image this process (and its workers) reads."""
    if max_pixels is not None:
        from medblip.data.images import set_max_pixels

        set_max_pixels(max_pixels or None)
