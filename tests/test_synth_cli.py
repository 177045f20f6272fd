"""``medblip data synth`` through typer's test runner."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import medblip.cli.synth_cmd  # noqa: F401  registers the command until cli/__init__ imports it
from medblip.cli.app import app
from medblip.data.synth import load_facts
from medblip.outputs import OutputError

runner = CliRunner()


def test_help_lists_the_options() -> None:
    result = runner.invoke(app, ["data", "synth", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--n", "--seed", "--size", "--splits", "--workers", "--json"):
        assert option in result.output


def test_small_run_writes_benchmark_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--n", "10", "--seed", "4", "--size", "48"])
    assert result.exit_code == 0, result.output
    assert "10 images of 48x48 px" in result.output and "facts.jsonl" in result.output
    assert len(load_facts(out)) == 10

    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--n", "5", "--size", "40", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["n"] == 5 and summary["size"] == 40 and sum(summary["splits"].values()) == 5


def test_bad_options_fail_clearly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "b"), "--splits", "0.8,x,0.1"])
    assert result.exit_code == 2 and "--splits" in result.output
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "b"), "--size", "10"])
    assert result.exit_code == 2
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("x")
    result = runner.invoke(app, ["data", "synth", "--out", str(busy), "--n", "2", "--size", "40"])
    assert isinstance(result.exception, OutputError)
