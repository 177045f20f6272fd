"""``medblip caption`` end to end on a tiny BLIP whose captions depend on the image."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from medblip.data import load_image
from medblip.models import GenerationSettings, create_model, init_tiny
from test_data_inputs import write_series
from test_perf_common import CAPTIONS, spice_up

pytestmark = pytest.mark.usefixtures("single_thread")
GEN = ["--num-beams", "2", "--max-new-tokens", "8"]
SETTINGS = GenerationSettings(num_beams=2, max_new_tokens=8)


@pytest.fixture(scope="module")
def spicy_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny BLIP with large random weights: different images get different captions."""
    root = tmp_path_factory.mktemp("caption-model")
    init = init_tiny("blip", root / "init", captions=CAPTIONS, image_size=32, hidden_size=64, num_layers=2, seed=1)
    spice_up(create_model(init)).save(root / "blip")
    return root / "blip"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Images in nested folders, a broken file, a 5-slice CT series and a 15-frame DICOM."""
    import shutil

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("archive") / "scans"
    rng = np.random.default_rng(0)
    pngs = []
    for i, rel in enumerate(["a.png", "x/b.png", "x/y/c.jpg"]):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(path)
        pngs.append(path)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    uid, slices = write_series(root / "ct", 5)
    dose = root / "rtdose.dcm"
    shutil.copy(get_testdata_file("rtdose.dcm"), dose)
    return {"root": root, "pngs": pngs, "uid": uid, "slices": slices, "dose": dose}


def expected_captions(model: Path, sources: list[tuple[Path, int | None]]) -> list[str]:
    adapter = create_model(model)
    return adapter.generate([load_image(p, frame=f) for p, f in sources], SETTINGS)


def test_prints_path_tab_caption_and_lists_unreadable(spicy_blip, archive, medblip_cli, capsys):
    root = archive["root"]
    assert medblip_cli("caption", str(root), "--model", str(spicy_blip), *GEN, "--no-progress") == 0
    out, err = capsys.readouterr()
    lines = [line.split("\t") for line in out.strip().splitlines()]
    a, b, c = archive["pngs"]
    middle = archive["slices"][2]
    # folder walk order: files of a folder (sorted), then its sub-folders; a series where it was found
    assert [p for p, _ in lines] == [str(a), str(archive["dose"]), str(middle), str(b), str(c)]
    assert [cap for _, cap in lines] == expected_captions(
        spicy_blip, [(a, None), (archive["dose"], None), (middle, None), (b, None), (c, None)])
    assert len({cap for _, cap in lines}) > 2  # captions depend on the image
    assert f"skipped 1 unreadable input(s):\n  {root / 'broken.png'}: " in err
    assert "5 image(s) captioned (5 now with fast, 0 resumed); 1 skipped; 2 DICOM series" in err


def test_out_files_resume_and_refuse_other_settings(spicy_blip, archive, medblip_cli, capsys, tmp_path):
    root = archive["root"]
    out = tmp_path / "res" / "captions.csv"
    def argv(*extra: str, out: Path = out) -> list[str]:
        return ["caption", str(root / "ct"), str(archive["dose"]), str(root / "broken.png"), "--series", "all",
                "--model", str(spicy_blip), *GEN, "--batch-size", "4", "--out", str(out), "--no-progress", *extra]

    assert medblip_cli(*argv()) == 0
    capsys.readouterr()
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "path", "series_uid", "instance_number", "frame", "caption"]
    assert len(rows) == 5 + 15
    assert [r["path"] for r in rows[:5]] == [str(p) for p in archive["slices"]]
    assert [r["instance_number"] for r in rows[:5]] == ["1", "2", "3", "4", "5"]
    assert {r["series_uid"] for r in rows[:5]} == {archive["uid"]} and rows[0]["frame"] == ""
    assert [r["frame"] for r in rows[5:]] == [str(k) for k in range(15)]
    sources = [(p, None) for p in archive["slices"]] + [(archive["dose"], k) for k in range(15)]
    assert [r["caption"] for r in rows] == expected_captions(spicy_blip, sources)

    info = json.loads((tmp_path / "res" / "captions.run.json").read_text())
    assert info["config"]["command"] == "caption" and info["config"]["series"] == "all"
    assert info["config"]["generation"]["num_beams"] == 2 and info["config"]["family"] == "blip"
    assert info["captioner"]["path"] == "fast" and info["versions"]["torch"]
    assert (info["images"], info["generated"], info["resumed"]) == (20, 20, 0)
    assert [u["input"] for u in info["unreadable"]] == [str(root / "broken.png")]

    # a rerun captions nothing; the files are the same
    before = out.read_bytes()
    assert medblip_cli(*argv()) == 0
    assert "20 image(s) captioned (0 now, 20 resumed); 1 skipped" in capsys.readouterr().err
    assert out.read_bytes() == before
    # other settings do not mix into the same output
    assert medblip_cli(*argv("--max-new-tokens", "9")) == 2
    assert "different generation settings (max_new_tokens: 8 -> 9)" in capsys.readouterr().err
    # the same rows as JSON lines
    jsonl = tmp_path / "res" / "captions.jsonl"
    assert medblip_cli(*argv(out=jsonl)) == 0
    as_json = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["caption"] for r in as_json] == [r["caption"] for r in rows]
    assert as_json[0]["instance_number"] == 1 and as_json[5]["frame"] == 0 and as_json[0]["frame"] is None


def test_an_existing_file_medblip_did_not_write_is_not_replaced(spicy_blip, archive, medblip_cli, capsys,
                                                                 tmp_path):
    out = tmp_path / "mine.csv"
    out.write_text("my own notes\n")
    argv = ["caption", str(archive["pngs"][0]), "--model", str(spicy_blip), *GEN, "--out", str(out), "--no-progress"]
    assert medblip_cli(*argv) == 2
    assert "was not written by `medblip caption`" in capsys.readouterr().err
    assert out.read_text() == "my own notes\n"
    assert medblip_cli(*argv, "--overwrite") == 0
    assert out.read_text().startswith("id,path,")
    assert medblip_cli("caption", str(tmp_path / "out.txt"), "--model", str(spicy_blip), "--out",
                       str(tmp_path / "x.txt")) == 2
    assert "x.txt: expected a .jsonl or .csv file name" in capsys.readouterr().err


def test_any_captioner_object_can_caption(spicy_blip, archive, tmp_path):
    """caption_inputs takes anything with .generate(images, settings): here the Python API's Captioner."""
    import medblip
    from medblip.captioning import caption_inputs

    captioner = medblip.load(spicy_blip, generation={"num_beams": 2, "max_new_tokens": 8})
    shown: list[dict] = []
    run = caption_inputs(captioner, [archive["root"] / "x"], tmp_path / "c.jsonl", generation=vars(SETTINGS),
                         progress=False, on_caption=shown.append)
    b, c = archive["pngs"][1:]
    assert [r["caption"] for r in run.rows] == [r["caption"] for r in shown] == expected_captions(
        spicy_blip, [(b, None), (c, None)])
    info = json.loads((tmp_path / "c.run.json").read_text())
    assert info["captioner"]["path"] == "Captioner" and captioner.last_path["path"] == "fast"
