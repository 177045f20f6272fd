"""``medblip caption`` and ``medblip evaluate`` under 2 CPU processes (torch.distributed.run, gloo): the inputs
are split between the processes, each resumes from its own part file, and the merged output is the one a
single process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_caption_cli import GEN, archive, spicy_blip  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


def launch(*argv: str, port_offset: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    port = 29600 + (os.getpid() + port_offset) % 300
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(port), "-m", "medblip", *argv], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_processes_caption_like_one_and_resume_from_part_files(spicy_blip, archive, medblip_cli,  # noqa: F811
                                                                   tmp_path, capsys):
    root = archive["root"]
    args = [str(root), "--series", "all", "--model", str(spicy_blip), *GEN, "--batch-size", "3", "--no-progress"]
    single = tmp_path / "one" / "captions.csv"
    assert medblip_cli("caption", *args, "--out", str(single)) == 0
    capsys.readouterr()
    reference = [json.loads(x) for x in (tmp_path / "one" / "captions.predictions.jsonl").read_text().splitlines()]
    assert len(reference) == 3 + 5 + 15  # broken.png has no line

    # an interrupted 2-process run: process 0 got 3 images done, process 1 one and a half
    out = tmp_path / "two" / "captions.csv"
    out.parent.mkdir()
    part = [out.with_name(f"captions.predictions.part-{r}.jsonl") for r in (0, 1)]
    part[0].write_text("".join(json.dumps(r) + "\n" for r in reference[:3]))
    part[1].write_text(json.dumps(reference[20]) + "\n" + json.dumps(reference[21])[:40])
    proc = launch("caption", *args, "--out", str(out))
    assert "resuming - 4 of 24 image(s) already predicted" in proc.stderr
    assert out.read_bytes() == single.read_bytes()
    assert not [p for p in out.parent.iterdir() if ".part-" in p.name]
    info = json.loads(out.with_name("captions.run.json").read_text())
    assert (info["processes"], info["generated"], info["resumed"], len(info["unreadable"])) == (2, 19, 4, 1)
    merged = [json.loads(x) for x in out.with_name("captions.predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in merged] == [r["id"] for r in reference]


def test_two_processes_evaluate_like_one(spicy_blip, small_synth_dir, tmp_path):  # noqa: F811
    from medblip.evaluation.predict import evaluate

    gen = {"num_beams": 2, "max_new_tokens": 8}
    one = evaluate(spicy_blip, small_synth_dir, tmp_path / "one", split="train", limit=11, generation=gen,
                   bootstrap=20, score_options={"meteor": False, "java": False}, progress=False, batch_size=4)
    launch("evaluate", "--model", str(spicy_blip), "--data", str(small_synth_dir), "--split", "train",
           "--limit", "11", "--num-beams", "2", "--max-new-tokens", "8", "--bootstrap", "20", "--no-java",
           "--no-meteor", "--batch-size", "4", "--out", str(tmp_path / "two"), "--no-progress", port_offset=1)

    def lines(folder: Path) -> list[dict]:
        rows = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "gen_seconds"} for r in rows]

    assert lines(tmp_path / "two") == lines(tmp_path / "one") and len(lines(tmp_path / "one")) == 11
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    # the files as written (the in-memory result also holds the fields the typed file leaves out when empty)
    assert two["metrics"] == json.loads((one.out / "metrics.json").read_text())["metrics"]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
