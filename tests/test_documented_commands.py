"""Every command the README's code blocks or a config's comments show parses as written: each `medblip ...`
line (and the medblip command inside each `accelerate launch ...` line) is parsed by the real CLI (commands,
options, choices, required arguments), and every config file it names exists. The commands that the tests
run for real: tests/test_configs_shipped.py (each config's own train / ablation / compare command) and
tests/test_train_study_path.py (accelerate launch with two CPU processes, --set train.mixed_precision=no)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[1]


def _joined(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1].rstrip() + " " + line.strip()
        else:
            out.append(line.strip())
    return out


def documented_commands() -> list[tuple[str, str]]:
    """(where, command line) for every medblip / accelerate launch command in the README and config comments."""
    found: list[tuple[str, str]] = []
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```(?:bash|text)?\n(.*?)```", readme, flags=re.S):
        for line in _joined(block.splitlines()):
            found.append(("README.md", line))
    for config in sorted((REPO / "configs").rglob("*.yaml")):
        comments = [ln.lstrip("#").strip() for ln in config.read_text(encoding="utf-8").splitlines()
                    if ln.lstrip().startswith("#")]
        for line in _joined(comments):
            found.append((str(config.relative_to(REPO)), line))
    commands = []
    for where, line in found:
        line = line.split(" | ")[-1].split("  #")[0].strip()  # `echo ... | medblip concepts -`; trailing comments
        line = re.sub(r"^(\.venv/bin/)", "", line)
        if line.startswith(("medblip ", "accelerate launch -")):
            commands.append((where, line))
    return commands


COMMANDS = documented_commands()


def parse_medblip(args: list[str]) -> None:
    from typer.main import get_command

    from medblip.cli import app

    group = get_command(app)
    ctx = group.make_context("medblip", list(args))
    command: click.Command = group
    while isinstance(command, click.Group):
        name, sub, rest = command.resolve_command(ctx, ctx.protected_args + ctx.args)
        assert sub is not None, f"unknown command {name}"
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub


def test_the_documentation_shows_commands() -> None:
    assert len(COMMANDS) > 30
    assert any("accelerate launch" in c for _, c in COMMANDS)


@pytest.mark.parametrize(("where", "line"), COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_documented_command_parses_as_written(where: str, line: str) -> None:
    args = shlex.split(line)
    if args[0] == "accelerate":
        from accelerate.commands.launch import launch_command_parser

        launched = launch_command_parser().parse_args(args[2:])
        assert launched.module and launched.training_script == "medblip", f"{where}: {line}"
        args = ["medblip", *launched.training_script_args]
        if launched.cpu and (launched.num_processes or 1) > 1:
            pytest.fail(f"{where}: `--cpu --num_processes N` starts one process; use --multi_gpu")
        if launched.config_file:
            assert (REPO / launched.config_file).is_file(), f"{where}: {launched.config_file} does not exist"
    try:
        parse_medblip(args[1:])
    except click.ClickException as exc:
        pytest.fail(f"{where}: `{line}` does not parse: {exc.format_message()}")
    for name in re.findall(r"configs/[\w./-]+\.yaml", line):
        assert (REPO / name).is_file(), f"{where}: {name} does not exist"
