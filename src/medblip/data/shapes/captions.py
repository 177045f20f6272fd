"""Plain-language captions of a :class:`~medblip.data.shapes.scene.ShapeScene` (many templates, never
contradicting the picture): "A dark oval with a small bright spot on its left side."

Every caption names the subject's shape; each mark is named with its size, tone, kind (``dot`` is
a tiny spot) and side, in the scene's order; a picture without a mark says so without naming a side.
"""

from __future__ import annotations

import numpy as np

from medblip.data.shapes import vocab
from medblip.data.shapes.scene import Mark, ShapeScene
from medblip.data.synth.captions import article


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


_TEXTURE_WORDS = {"plain": "", "grainy": "grainy", "cloudy": "cloudy", "striped": "striped", "speckled": "speckled",
                  "mottled": "mottled"}


def subject_phrase(scene: ShapeScene, rng: np.random.Generator) -> str:
    """'dark grainy oval', 'striped white square', 'light triangle' (without the article)."""
    level = {"grey": _pick(rng, ("grey", "grey", "gray")), "light": _pick(rng, ("light", "pale"))}.get(
        scene.shape_level, scene.shape_level)
    texture = _pick(rng, ("", "", "smooth")) if scene.shape_texture == "plain" else _TEXTURE_WORDS[scene.shape_texture]
    words = [level, texture] if rng.random() < 0.7 else [texture, level]
    return " ".join(w for w in (*words, scene.shape) if w)


def background_phrase(scene: ShapeScene) -> str:
    return " ".join(w for w in (scene.background, _TEXTURE_WORDS[scene.background_texture], "background") if w)


def mark_phrase(mark: Mark, rng: np.random.Generator) -> str:
    """'small bright spot', 'tiny black dot', 'large faint dark hoop' (without the article)."""
    size = mark.size_word()
    noun = "dot" if mark.kind == "spot" and size == "tiny" and rng.random() < 0.5 else mark.kind
    if mark.faint:
        return f"{size} faint {mark.tone} {noun}"
    return f"{size} {_pick(rng, vocab.MARK_BRIGHT if mark.tone == 'bright' else vocab.MARK_DARK)} {noun}"


def position_phrase(mark: Mark, rng: np.random.Generator, of: bool = False) -> str:
    """Where the mark is: 'on its left side', 'near the top right' (``of``: 'on the left side of')."""
    side, vertical = mark.side, mark.vertical
    if of:
        options = [f"on the {side} side of", f"near the {side} edge of", f"on the {side} of"]
        if vertical:
            options.append(f"near the {vertical} {side} of")
        return _pick(rng, options)
    if vertical and rng.random() < 0.4:
        return _pick(rng, (f"near the {vertical} {side}", f"in the {vertical} {side} corner"))
    return _pick(rng, (f"on its {side} side", f"on the {side}", f"near its {side} edge", f"on the {side} side",
                       f"to the {side} of the middle"))


def _described(mark: Mark, rng: np.random.Generator, size: int) -> str:
    pixels = round(2 * mark.radius * size / 64)
    extent = f" about {pixels} pixels across" if rng.random() < 0.2 else ""
    return f"{_with_article(mark_phrase(mark, rng))}{extent} {position_phrase(mark, rng)}"


def write_caption(scene: ShapeScene, rng: np.random.Generator, size: int = 64) -> str:
    """The caption of ``scene`` rendered at ``size`` pixels (sizes in pixels are said at that scale)."""
    subject = _with_article(subject_phrase(scene, rng))
    background = _with_article(background_phrase(scene))
    if scene.simple:  # the marks only: nothing to say that does not need looking at a mark
        text = " and ".join(_described(m, rng, size) for m in scene.marks) + "."
        return text[:1].upper() + text[1:]
    if not scene.marks:
        text = _pick(rng, (
            f"{subject} on {background}.",
            f"{subject} with nothing on it.",
            f"{subject} on {background}, with no marks.",
            f"just {subject}, plain and unmarked.",
            f"{subject}; there are no spots or marks.",
        ))
    elif len(scene.marks) == 1:
        mark = scene.marks[0]
        described = _described(mark, rng, size)
        text = _pick(rng, (
            f"{subject} with {described}.",
            f"{subject} with {described}.",
            f"{_with_article(mark_phrase(mark, rng))} {position_phrase(mark, rng, of=True)} {subject}.",
            f"{subject} on {background}, with {described}.",
            f"{subject} on {background}. It has {described}.",
            f"a picture of {subject} showing {described}.",
        ))
    else:
        first, second = (_described(m, rng, size) for m in scene.marks)
        text = _pick(rng, (
            f"{subject} with {first} and {second}.",
            f"{subject} on {background}, with {first} and {second}.",
            f"{subject} with two marks: {first} and {second}.",
            f"a picture of {subject} showing {first}. There is also {second}.",
        ))
    return text[:1].upper() + text[1:]
