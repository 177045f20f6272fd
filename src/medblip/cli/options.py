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

#: medblip's GenerationSettings defaults, spelled out for --help (importing the models costs the CLI's
#: start-up; tests/test_checkpoint_generation.py checks that they agree)
GENERATION_DEFAULTS: dict[str, Any] = {"num_beams": 3, "max_new_tokens": 64, "min_new_tokens": 0,
                                       "do_sample": False, "top_p": 1.0, "temperature": 1.0,
                                       "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}


def saved_or(name: str) -> str:
    """The default of a generation option: the checkpoint's saved setting, else medblip's."""
    default = GENERATION_DEFAULTS[name]
    shown = ("--do-sample" if default else "--no-sample") if isinstance(default, bool) else default
    return f"(default: the checkpoint's saved setting, else {shown})"


#: the generation options of ``medblip evaluate`` / ``medblip caption``: name -> (type, typer option)
GENERATION_OPTIONS: dict[str, tuple[Any, Any]] = {
    "num_beams": (int | None, typer.Option(None, "--num-beams", min=1,
                                           help=f"Beam width, 1 = greedy {saved_or('num_beams')}.")),
    "max_new_tokens": (int | None, typer.Option(None, "--max-new-tokens", min=1, help=saved_or("max_new_tokens"))),
    "min_new_tokens": (int | None, typer.Option(None, "--min-new-tokens", min=0, help=saved_or("min_new_tokens"))),
    "do_sample": (bool | None, typer.Option(None, "--do-sample/--no-sample",
                                            help=f"Nucleus sampling {saved_or('do_sample')}.")),
    "top_p": (float | None, typer.Option(None, "--top-p", help=saved_or("top_p"))),
    "temperature": (float | None, typer.Option(None, "--temperature", help=saved_or("temperature"))),
    "repetition_penalty": (float | None, typer.Option(None, "--repetition-penalty",
                                                      help=saved_or("repetition_penalty"))),
    "no_repeat_ngram_size": (int | None, typer.Option(None, "--no-repeat-ngram-size", min=0,
                                                      help=saved_or("no_repeat_ngram_size"))),
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
