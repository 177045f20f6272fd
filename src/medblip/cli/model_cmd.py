"""``medblip model ...`` commands: tiny stand-in checkpoints and checkpoint inspection."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from medblip.cli.app import model_app
from medblip.cli.options import OVERWRITE_HELP


class TinyFamily(StrEnum):
    blip = "blip"
    blip2 = "blip2"
    instructblip = "instructblip"
    vit_gpt2 = "vit-gpt2"


class PositionInit(StrEnum):
    normal = "normal"
    sincos = "sincos"


@model_app.command("init-tiny")
def init_tiny_cmd(
    family: TinyFamily | None = typer.Option(None, "--family", help="Model family (not needed with --like)."),
    like: str | None = typer.Option(
        None, "--like", help="A twin of a real checkpoint: a folder of its published config files (config.json, "
                             "tokenizer_config.json, ...) or a hub id whose published values medblip ships. Keeps "
                             "every id, vocabulary size, image size and processor setting; only widths, depths "
                             "and heads come from the options below."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (an earlier tiny model there is replaced "
                                                      "atomically; another non-empty folder is refused)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    image_size: int = typer.Option(64, "--image-size", min=8, help="Input image size in pixels."),
    patch_size: int | None = typer.Option(None, "--patch-size", min=1, help="ViT patch size (default image/8)."),
    hidden_size: int = typer.Option(32, "--hidden-size", min=4, help="Hidden size of every tower."),
    num_layers: int = typer.Option(1, "--layers", min=1, help="Layers per tower."),
    num_heads: int = typer.Option(2, "--heads", min=1, help="Attention heads."),
    vocab_size: int = typer.Option(512, "--vocab-size", min=64, help="Tokenizer vocabulary size (at most)."),
    captions: Path | None = typer.Option(None, "--captions",
                                         help="Text file, one caption per line, added to the tokenizer corpus."),
    seed: int = typer.Option(0, "--seed", help="Seed for the random weights."),
    language_model: str | None = typer.Option(None, "--language-model",
                                              help="blip2/instructblip only: opt (decoder-only) or t5."),
    vision_init_std: float | None = typer.Option(
        None, "--vision-init-std",
        help="Std of the vision tower's random weights (default: the transformers config's; 1e-10 for BLIP "
             "families, whose from-scratch ViT then starts near zero; 0.02 is the original BLIP/ViT init)."),
    position_init_std: float | None = typer.Option(
        None, "--position-init-std",
        help="Std of the vision tower's position embeddings (default: as the rest of the tower). 1.0 lets a "
             "from-scratch ViT learn where things are within a short run (the synthetic side-learning recipe)."),
    position_init: PositionInit = typer.Option(
        PositionInit.normal, "--position-init",
        help="How the vision tower's position embeddings start: normal (random, at --position-init-std) or "
             "sincos (MAE's 2-D sine-cosine table times --position-init-std, default 1), which lets a short "
             "from-scratch run tell left from right and still attend by content (the pretrained stand-ins')."),
    cross_attention_init_std: float | None = typer.Option(
        None, "--cross-attention-init-std",
        help="Std of the cross-attention query and key weights (default: as the rest of the decoder). 0.1 "
             "makes a from-scratch decoder's first attention content-selective, so it learns to look at a "
             "small thing in ~100 steps instead of several hundred (the pretrained stand-ins' recipe)."),
) -> None:
    """Write a tiny randomly initialised model of the family's real transformers classes."""
    from medblip.errors import MedblipError
    from medblip.models import create_model, init_tiny

    if family is None and like is None:
        raise MedblipError("init-tiny: give --family or --like")
    path = init_tiny(family.value if family else None, out, like=like, captions=captions, image_size=image_size, seed=seed,
                     vocab_size=vocab_size, patch_size=patch_size, hidden_size=hidden_size,
                     num_layers=num_layers, num_heads=num_heads, language_model=language_model,
                     vision_init_std=vision_init_std, position_init_std=position_init_std,
                     position_init=position_init.value, cross_attention_init_std=cross_attention_init_std,
                     overwrite=overwrite)
    model = create_model(path)
    total = sum(model.parameter_counts().values())
    typer.echo(f"wrote tiny {model.family} ({type(model.base_model).__name__}, {total:,} parameters) to {path}")


class PretrainFamily(StrEnum):
    blip = "blip"
    vit_gpt2 = "vit-gpt2"


@model_app.command("pretrain-tiny")
def pretrain_tiny_cmd(
    family: PretrainFamily = typer.Option(..., "--family", help="Model family."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (replaced atomically if it exists)."),
    recipe: str = typer.Option("full", "--recipe", help="Recipe in the recipe file: full, or quick (seconds, "
                                                         "for smoke tests)."),
    config: Path | None = typer.Option(None, "--config", help="Recipe file (default: configs/demo/pretrain_tiny.yaml)."),
    captions: Path | None = typer.Option(None, "--captions",
                                         help="Text file, one caption per line, added to the tokenizer corpus "
                                              "(the captions the stand-in will be fine-tuned on)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights and the data order."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Pretrain a tiny stand-in of a general-domain captioner on the plain-language shapes corpus.

    The stand-in (real transformers classes, save_pretrained folder) looks at pictures and writes
    lay captions before it meets radiology, as a pretrained BLIP or ViT-GPT2 does; its tokenizer also
    covers radiology captions. Deterministic for a seed on a given machine; the full recipe takes
    2-3 minutes on 2 CPU cores. OUT/pretrain.json records the recipe, training and sample captions.
    """
    from medblip.experiments.pretrain import load_recipe, pretrain_tiny
    from medblip.models.tiny import read_captions

    spec = load_recipe(family.value, recipe, config)
    path = pretrain_tiny(family.value, out, recipe=spec, seed=seed,
                         captions=read_captions(captions) if captions else None, progress=progress, log=typer.echo,
                         overwrite=overwrite)
    typer.echo(f"wrote pretrained tiny {family.value} stand-in to {path} (details: {path / 'pretrain.json'})")


@model_app.command("info")
def info_cmd(
    name_or_path: str = typer.Argument(..., help="Hub id or save_pretrained folder."),
    family: str | None = typer.Option(None, "--family", help="Family (default: from config.json)."),
    local_files_only: bool = typer.Option(False, "--offline", help="Never download; use the local cache only."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Family, transformers classes, parameter counts per group and supported strategies."""
    from medblip.io import dumps
    from medblip.models import create_model

    model = create_model(name_or_path, family, local_files_only=local_files_only or None)
    info = model.describe()
    if json_out:
        typer.echo(dumps(info))
        return
    typer.echo(f"{info['name_or_path']}")
    typer.echo(f"  family      {info['family']}")
    typer.echo(f"  model       {info['model_class']} ({info['dtype']})")
    typer.echo(f"  processor   {info['processor_class']} / tokenizer {info['tokenizer_class']}")
    params = info["parameters"]
    typer.echo(f"  parameters  {params['total']:,}")
    for group, n in params.items():
        if group != "total":
            typer.echo(f"    {group:<16}{n:>14,}  ({n / max(params['total'], 1):.1%})")
    typer.echo(f"  strategies  {', '.join(info['strategies'])}")
