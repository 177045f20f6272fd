"""Options that several commands share, spelled and explained once."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import typer

MAX_PIXELS_HELP = ("Refuse images with more pixels than this (decompression-bomb guard; 0: no limit) "
                   "[default: 64,000,000, or $MEDBLIP_MAX_PIXELS].")
OVERWRITE_HELP = ("Write into a non-empty --out folder that is not an earlier output of this command "
                  "(files of the same names are replaced; other files are kept).")


def apply_max_pixels(max_pixels: int | None) -> None:
    """``--max-pixels N`` given: make it the limit of every image this process (and its workers) reads."""
    if max_pixels is not None:
        from medblip.data.images import set_max_pixels

        set_max_pixels(max_pixels or None)

#: the generation options of ``medblip evaluate`` / ``medblip caption``: name -> (type, typer option)
GENERATION_OPTIONS: dict[str, tuple[Any, Any]] = {
    "num_beams": (int | None, typer.Option(None, "--num-beams", min=1, help="Beam width (1 = greedy).")),
    "max_new_tokens": (int | None, typer.Option(None, "--max-new-tokens", min=1)),
    "min_new_tokens": (int | None, typer.Option(None, "--min-new-tokens", min=0)),
    "do_sample": (bool | None, typer.Option(None, "--do-sample/--no-sample", help="Nucleus sampling.")),
    "top_p": (float | None, typer.Option(None, "--top-p")),
    "temperature": (float | None, typer.Option(None, "--temperature")),
    "repetition_penalty": (float | None, typer.Option(None, "--repetition-penalty")),
    "no_repeat_ngram_size": (int | None, typer.Option(None, "--no-repeat-ngram-size", min=0)),
    "prompt": (str | None, typer.Option(None, "--prompt", help="Prompt (BLIP-2 / InstructBLIP; default: the family's).")),
}


def generation_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``command`` the generation options; it receives those given as ``generation: dict[str, Any]``.

    The options are added to the signature typer reads (after the command's own parameters, so they
    keep their place in ``--help``) and folded into one ``generation`` argument for the command.
    """
    sig = inspect.signature(command)
    own = [p for p in sig.parameters.values() if p.name != "generation"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
             for name, (kind, option) in GENERATION_OPTIONS.items()]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name, None) for name in GENERATION_OPTIONS}
        return command(*args, generation={k: v for k, v in values.items() if v is not None}, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
    return wrapper
