"""The typer application objects; command modules register their commands on them.

Kept separate from ``medblip.cli.__init__`` so that each command module can import the apps
without import cycles. Command modules import heavy libraries (torch, transformers) inside the
command functions, so ``medblip --help`` stays fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="medblip",
    help="Fine-tune, evaluate, compare and explain vision-language models for radiology captioning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Datasets: validate real layouts, generate the synthetic benchmark, cache images.",
                       no_args_is_help=True)
model_app = typer.Typer(help="Models: create tiny stand-ins, inspect checkpoints.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
