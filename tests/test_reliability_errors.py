"""Issue 18, items 9 and 11-16: bad inputs end in one line -- exit 2, ``medblip: error: <what>: <reason>;
<fix>`` -- never a traceback.

The commands run in-process as the console script does (``medblip_cli``): an exception that is not
turned into the one-line error fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

import medblip.cli  # noqa: F401  registers the commands
from medblip.cli.app import app
from medblip.data.images import MAX_PIXELS_ENV

REPO = Path(__file__).resolve().parents[1]


def one_line(capsys: pytest.CaptureFixture[str], status: int) -> str:
    """The single ``medblip: error:`` line of a command that exited with ``status`` (asserted 2)."""
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("medblip: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(autouse=True)
def default_pixel_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """--max-pixels sets a process-wide limit; every test starts from (and restores) the default."""
    monkeypatch.setenv(MAX_PIXELS_ENV, "")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    yield


# -- item 9: an invalid DICOM value in explain ----------------------------------------------------------------
def test_explain_on_an_invalid_dicom_is_one_line(tmp_path, tiny_blip_dir, medblip_cli, capsys):
    bad = get_testdata_file("badVR.dcm")
    line = one_line(capsys, medblip_cli("explain", "--model", str(tiny_blip_dir), "--image", bad,
                                        "--out", str(tmp_path / "x"), "--no-progress"))
    assert line == (f"medblip: error: {bad}: invalid DICOM value NumberOfFrames='1A' (not a whole number); "
                    "fix the file's header or re-export it")


# -- item 11: output folders that cannot be written -------------------------------------------------------------
def _unwritable(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "out"
    probe = Path("/sys/medblip-reliability-probe")  # root may write anywhere but in /sys
    try:
        probe.mkdir()
    except OSError:
        return probe
    probe.rmdir()
    pytest.skip("no folder here refuses writes to this user")


def test_unwritable_out_is_one_line(tmp_path, tiny_blip_dir, small_synth_dir, medblip_cli, capsys):
    out = _unwritable(tmp_path)
    line = one_line(capsys, medblip_cli("evaluate", "--model", str(tiny_blip_dir), "--data", str(small_synth_dir),
                                        "--out", str(out), "--no-progress"))
    assert line.startswith(f"medblip: error: {out}") and "choose a writable --out" in line
    line = one_line(capsys, medblip_cli("model", "init-tiny", "--family", "blip", "--out", str(out)))
    assert "choose a writable --out" in line


def test_out_naming_an_existing_file_is_one_line(tmp_path, tiny_blip_dir, small_synth_dir, medblip_cli, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    for argv in (["model", "init-tiny", "--family", "blip", "--out", str(file)],
                 ["data", "synth", "--out", str(file), "--n", "2"],
                 ["evaluate", "--model", str(tiny_blip_dir), "--data", str(small_synth_dir), "--out", str(file)],
                 ["report", str(small_synth_dir), "--out", str(file)]):
        line = one_line(capsys, medblip_cli(*argv))
        assert line == f"medblip: error: {file}: --out names an existing file, not a folder; choose a folder path"
    assert file.read_text() == "keep me"


def test_init_tiny_into_the_current_folder_is_one_line(tmp_path, medblip_cli, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line(capsys, medblip_cli("model", "init-tiny", "--family", "blip", "--out", "."))
    assert line == ("medblip: error: .: --out is the current folder (or holds it); name a new folder, "
                    "e.g. --out init-tiny-output")
    assert list(tmp_path.iterdir()) == []


# -- item 12: a device this torch cannot use ----------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_cpu_only_torch_is_one_line(tmp_path, tiny_blip_dir, small_synth_dir, medblip_cli, capsys):
    line = one_line(capsys, medblip_cli("evaluate", "--model", str(tiny_blip_dir), "--data", str(small_synth_dir),
                                        "--device", "cuda", "--out", str(tmp_path / "e"), "--no-progress"))
    assert line.startswith("medblip: error: --device cuda: ") and "use --device cpu" in line
    line = one_line(capsys, medblip_cli("explain", "--model", str(tiny_blip_dir), "--device", "gpu0",
                                        "--image", str(small_synth_dir / "test" / "SYNTH_000055.jpg"),
                                        "--out", str(tmp_path / "x")))
    assert line.startswith("medblip: error: --device 'gpu0': not a device name")


# -- item 13: a predictions file that is not UTF-8 ----------------------------------------------------------
def test_score_on_a_non_utf8_file_is_one_line(tmp_path, medblip_cli, capsys):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": "a", "reference": "ok", "prediction": "ok"}\n'
                     + '{"id": "b", "reference": "épanchement", "prediction": "x"}\n'.encode("latin-1"))
    line = one_line(capsys, medblip_cli("score", str(path), "--no-java"))
    assert line == (f"medblip: error: {path}:2: not UTF-8 text (byte 0xe9 at column 27); save the file as UTF-8")


# -- item 14: damaged or unsafe checkpoint files ------------------------------------------------------------
def test_truncated_weights_are_one_line(tmp_path, tiny_blip_dir, medblip_cli, capsys):
    model = tmp_path / "m"
    shutil.copytree(tiny_blip_dir, model)
    weights = model / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    line = one_line(capsys, medblip_cli("model", "info", str(model)))
    assert line.startswith(f"medblip: error: {weights}: file is corrupt or unsafe (SafetensorError: ")
    assert line.endswith("; re-save or re-download it")


def _resumable_looking_run(root: Path, state: bytes, model: Path, data: Path) -> Path:
    """A config and a run folder whose checkpoints/last holds ``state`` as its trainer state."""
    import yaml

    from _train_fixtures import experiment
    from medblip.outputs import prepare_output_dir

    prepare_output_dir(root / "run", "train")
    last = root / "run" / "checkpoints" / "last"
    shutil.copytree(model, last)
    (last / "trainer_state.pt").write_bytes(state)
    cfg = root / "c.yaml"
    cfg.write_text(yaml.safe_dump(experiment(model, data, root / "run", max_steps=1).model_dump(mode="json")))
    return cfg


def test_truncated_trainer_state_is_one_line(tmp_path, tiny_blip_dir, small_synth_dir, medblip_cli, capsys):
    import io

    buf = io.BytesIO()
    torch.save({"version": 1, "global_step": 3, "x": torch.zeros(256)}, buf)
    cfg = _resumable_looking_run(tmp_path, buf.getvalue()[:-40], tiny_blip_dir, small_synth_dir)
    line = one_line(capsys, medblip_cli("train", str(cfg), "--resume", "--no-progress"))
    state = tmp_path / "run" / "checkpoints" / "last" / "trainer_state.pt"
    assert line.startswith(f"medblip: error: {state}: file is corrupt or unsafe (")
    assert line.endswith("; resume from an intact checkpoint, or start the run again without --resume")


class _Payload:
    """A pickle that would create a file if it were ever unpickled with code execution."""

    target = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_a_malicious_pickle_is_refused_not_run(tmp_path, tiny_blip_dir, small_synth_dir, medblip_cli, capsys):
    import io

    witness = tmp_path / "pwned"
    _Payload.target = str(witness)
    buf = io.BytesIO()
    torch.save({"version": 1, "payload": _Payload()}, buf)
    cfg = _resumable_looking_run(tmp_path, buf.getvalue(), tiny_blip_dir, small_synth_dir)
    line = one_line(capsys, medblip_cli("train", str(cfg), "--resume", "--no-progress"))
    assert "file is corrupt or unsafe (it holds Python objects other than tensors and plain data; they were not " \
           "loaded or run)" in line
    # the same file as a model's weights
    model = tmp_path / "pickled"
    shutil.copytree(tiny_blip_dir, model)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(buf.getvalue())
    line = one_line(capsys, medblip_cli("model", "info", str(model)))
    assert line.startswith(f"medblip: error: {model / 'pytorch_model.bin'}: file is corrupt or unsafe")
    assert not witness.exists()


# -- item 15: a hub id with no network ------------------------------------------------------------------------
@pytest.mark.slow
def test_a_misspelt_hub_id_without_network_fails_at_once_naming_the_switch(tmp_path):
    # Nothing listens on port 9 of this machine: the hub is unreachable, as on an offline machine.
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "medblip", "model", "info", "Salesforce/blip-image-captioning-bsae"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "medblip: error: model 'Salesforce/blip-image-captioning-bsae' is not a local folder and not in the Hugging "
        "Face cache, and the hub cannot be reached (127.0.0.1:9: Connection refused); check the id for typos or "
        "pass a checkpoint folder (set HF_HUB_OFFLINE=1 to use only the local cache without trying the network)"]


# -- item 16: the decompression-bomb message names an option the command has ----------------------------------
IMAGE_COMMANDS = (["data", "validate"], ["data", "cache"], ["evaluate"], ["compare"], ["ablation"], ["train"],
                  ["explain"], ["report"], ["demo"])


def test_every_command_that_reads_images_has_max_pixels():
    runner = CliRunner()
    for argv in IMAGE_COMMANDS:
        res = runner.invoke(app, [*argv, "--help"])
        assert res.exit_code == 0 and "--max-pixels" in res.output, argv


def test_pixel_limit_message_names_max_pixels_and_the_option_lifts_it(tmp_path, tiny_blip_dir, medblip_cli, capsys):
    image = tmp_path / "big.png"
    Image.new("RGB", (100, 80), (90, 90, 90)).save(image)
    line = one_line(capsys, medblip_cli("explain", "--model", str(tiny_blip_dir), "--image", str(image),
                                        "--max-pixels", "5000", "--out", str(tmp_path / "x"), "--no-progress"))
    assert line == (f"medblip: error: {image}: 100x80 = 8,000 pixels exceeds the limit of 5,000 (possible "
                    "decompression bomb); if the image is genuine, raise the limit with --max-pixels N "
                    f"(or {MAX_PIXELS_ENV}=N)")
    assert medblip_cli("explain", "--model", str(tiny_blip_dir), "--image", str(image), "--max-pixels", "8000",
                       "--max-new-tokens", "2", "--out", str(tmp_path / "x"), "--no-progress") == 0
