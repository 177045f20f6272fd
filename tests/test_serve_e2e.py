"""``medblip serve`` for real: a server in a child process on a free port, driven by headless
Chromium (Playwright), the official ``openai`` client, medblip's API captioner and ``medblip compare``
with an ``api:`` system. One server for the module; nothing is mocked."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image

from medblip.data import load_image
from medblip.serving.process import ServerProcess, free_port

pytest.importorskip("fastapi")
pytest.importorskip("gradio")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from _serve_fixtures import MAX_NEW_TOKENS  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def other_blip_dir(tmp_path_factory):
    """A second model (another seed) for the page's model picker."""
    from medblip.models import init_tiny

    return init_tiny("blip", tmp_path_factory.mktemp("other") / "other", image_size=64, seed=1, vision_init_std=0.02)


@pytest.fixture(scope="module")
def server(served_blip_dir, other_blip_dir, tmp_path_factory):
    args = ["--model", f"tiny={served_blip_dir}", "--model", f"other={other_blip_dir}",
            "--max-new-tokens", str(MAX_NEW_TOKENS), "--max-upload-mb", "1"]
    with ServerProcess(args, log_path=tmp_path_factory.mktemp("serve") / "server.log") as srv:
        yield srv


def _local(model_dir):
    from medblip.models import create_model

    adapter = create_model(model_dir)
    return lambda data: adapter.generate([load_image(data)], max_new_tokens=MAX_NEW_TOKENS)[0]


@pytest.fixture(scope="module")
def local(served_blip_dir):
    """medblip's local captioning with the server's settings: the captions the API must give back."""
    return _local(served_blip_dir)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def _png(jpeg: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buf, format="PNG")
    return buf.getvalue()


def _uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _ask(client, url: str, text: str | None = "Describe this radiology image.", **kw):
    content = ([{"type": "text", "text": text}] if text else []) + [{"type": "image_url", "image_url": {"url": url}}]
    return client.chat.completions.create(model=kw.pop("model", "tiny"), messages=[{"role": "user", "content": content}],
                                          **kw)


# -- (a) the page in a browser -----------------------------------------------------------------------
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/system-deps.sh installs it)")
def test_page_in_headless_chromium(server, synth_jpegs, ct_dicom, local, other_blip_dir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    png = tmp_path / "ct-chest.png"
    png.write_bytes(_png(synth_jpegs[3]))
    notes = tmp_path / "notes.txt"
    notes.write_text("Patient notes: not an image.\n")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(ct_dicom[: len(ct_dicom) // 2])
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(server.url + "/")
            page.set_input_files("#upload input[type=file]", str(png))
            page.wait_for_function("() => document.querySelector('#caption textarea')?.value.length > 0",
                                   timeout=60_000)
            assert page.input_value("#caption textarea") == local(png.read_bytes())
            page.wait_for_selector("#overlays img", timeout=60_000)
            assert page.locator("#overlays img").count() >= 1
            assert "Captioned by tiny" in page.inner_text("#status")
            concepts = page.inner_text("#concepts")
            assert all(k in concepts for k in ("modality", "region", "findings", "side"))
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

            # the model picker: the same image, captioned by the other model
            page.click("#model input")
            page.get_by_role("option", name="other").click()
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('other')",
                                   timeout=60_000)
            assert page.input_value("#caption textarea") == _local(other_blip_dir)(png.read_bytes())

            # a built-in synthetic example, with its reference caption
            from medblip.serving.examples import synthetic_examples

            example = synthetic_examples()[1]
            page.click("#example input")
            page.get_by_role("option", name=example.label).click()
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('Reference')",
                                   timeout=60_000)
            assert example.reference in page.inner_text("#status")
            assert page.input_value("#caption textarea") == _local(other_blip_dir)(example.data)

            for upload, reason in ((notes, "not a recognised image format"), (broken, "cannot decode DICOM")):
                page.goto(server.url + "/")  # a fresh page: the file box takes one file
                page.set_input_files("#upload input[type=file]", str(upload))
                page.wait_for_function("() => document.querySelector('#status').innerText.includes('Cannot use')",
                                       timeout=60_000)
                status = page.inner_text("#status")
                assert reason in status and upload.name in status
                assert page.input_value("#caption textarea") == ""
        finally:
            browser.close()


# -- (b) the OpenAI-compatible API with the official client --------------------------------------------
def test_openai_client_gets_the_local_caption(client, synth_jpegs, ct_dicom, local):
    assert [m.id for m in client.models.list()] == ["tiny", "other"]
    for data, mime in ((synth_jpegs[0], "image/jpeg"), (_png(synth_jpegs[5]), "image/png"),
                       (ct_dicom, "application/dicom")):
        reply = _ask(client, _uri(data, mime))
        assert reply.choices[0].message.role == "assistant" and reply.choices[0].finish_reason == "stop"
        assert reply.choices[0].message.content == local(data) and reply.model == "tiny"
        assert reply.usage.completion_tokens > 0
    streamed = _ask(client, _uri(synth_jpegs[0], "image/jpeg"), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == local(synth_jpegs[0])
    shorter = _ask(client, _uri(synth_jpegs[0], "image/jpeg"), text=None, max_tokens=3)
    assert len(shorter.choices[0].message.content) < len(local(synth_jpegs[0]))


def test_api_errors_have_openai_shape(client, server, synth_jpegs, ct_dicom, tmp_path):
    buf = io.BytesIO()  # noise does not compress: 1.4 MB, above the server's --max-upload-mb 1
    Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3)).save(buf, format="PNG")
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png(synth_jpegs[0]))
    cases = [
        (_uri(b"Patient notes, not an image.", "text/plain"), "invalid_image", "not a recognised image format"),
        (_uri(ct_dicom[: len(ct_dicom) // 2], "application/dicom"), "invalid_image", "cannot decode DICOM"),
        (_uri(buf.getvalue()), "image_too_large", "limit"),
        ("https://example.org/ct.png", "remote_image_refused", "--allow-remote-images"),
        (f"file://{secret}", "invalid_image_url", "never reads files"),
        (str(secret), "invalid_image_url", "never reads files"),
    ]
    for url, code, words in cases:
        with pytest.raises(openai.BadRequestError) as info:
            _ask(client, url)
        err = info.value.body
        assert info.value.status_code == 400 and err["code"] == code and words in err["message"], (url[:40], err)
        assert err["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as info:
        _ask(client, _uri(synth_jpegs[0], "image/jpeg"), model="gpt-4o")
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="exactly one image_url"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}])
    resp = httpx.get(server.base_url + "/embeddings")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"


# -- (c) the API captioner and medblip compare against the server --------------------------------------
def test_api_captioner_against_the_server(server, synth_jpegs, local, tmp_path):
    from medblip.models.api import ApiCaptioner

    images = [load_image(j) for j in synth_jpegs]
    expected = [local(j) for j in synth_jpegs]
    config = {"base_url": server.base_url, "model": "tiny", "cache_dir": str(tmp_path / "cache"), "concurrency": 4}
    first = ApiCaptioner(**config)
    assert first.generate(images) == expected
    assert (first.stats.calls, first.stats.captioned, first.stats.failures) == (8, 8, 0)
    again = ApiCaptioner(**config)  # a rerun: every caption from the disk cache, no call
    assert again.generate(images) == expected
    assert (again.stats.calls, again.stats.cached) == (0, 8) and "8 from the cache" in again.summary_text()
    other_prompt = ApiCaptioner(**config, prompt="Another prompt.")
    other_prompt.generate(images[:2])
    assert other_prompt.stats.calls == 2  # the prompt is part of the cache key


def test_caption_cli_through_the_api(server, synth_jpegs, local, medblip_cli, tmp_path, capsys):
    """`medblip caption --api` against `medblip serve`: the captions medblip gives locally, a run.json
    with the API's call summary, and a rerun that resumes without a call."""
    import csv
    import json

    scans = tmp_path / "scans"
    scans.mkdir()
    for i, jpeg in enumerate(synth_jpegs[:4]):
        (scans / f"study{i}.jpg").write_bytes(jpeg)
    out = tmp_path / "captions.csv"
    argv = ["caption", str(scans), "--api", server.base_url, "--api-model", "tiny", "--out", str(out),
            "--max-new-tokens", str(MAX_NEW_TOKENS), "--no-progress"]
    assert medblip_cli(*argv) == 0
    with out.open(encoding="utf-8", newline="") as fh:
        rows = {Path(r["path"]).name: r["caption"] for r in csv.DictReader(fh)}
    assert rows == {f"study{i}.jpg": local(jpeg) for i, jpeg in enumerate(synth_jpegs[:4])}
    info = json.loads((tmp_path / "captions.run.json").read_text(encoding="utf-8"))
    assert info["api"]["config"]["model"] == "tiny" and info["api"]["stats"]["failures"] == 0
    assert info["api"]["stats"]["images"] == 4
    assert "api: tiny at" in capsys.readouterr().err
    assert medblip_cli(*argv) == 0  # resumed from the log: nothing sent
    info = json.loads((tmp_path / "captions.run.json").read_text(encoding="utf-8"))
    assert info["resumed"] == 4 and info["api"]["stats"]["calls"] == 0


def test_caption_cli_wants_a_model_or_an_api(medblip_cli, tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(b"")
    assert medblip_cli("caption", str(tmp_path), "--api", "http://127.0.0.1:9/v1") == 2
    assert "--api needs --api-model" in capsys.readouterr().err
    assert medblip_cli("caption", str(tmp_path)) == 2
    assert "give --model" in capsys.readouterr().err


def test_compare_with_an_api_system(server, served_blip_dir, small_synth_dir, medblip_cli, tmp_path, capsys):
    out = tmp_path / "cmp"
    cfg = tmp_path / "compare.yaml"
    cfg.write_text(f"""
data: {small_synth_dir}
split: test
out: {out}
reference: local
bootstrap: 50
significance_samples: 50
scoring: {{meteor: false, java: false}}
generation: {{max_new_tokens: {MAX_NEW_TOKENS}}}
systems:
  - name: local
    model: {served_blip_dir}
  - name: served
    description: the same model behind medblip serve
    api:
      base_url: {server.base_url}
      model: tiny
      cache_dir: {tmp_path / "cache"}
""")
    assert medblip_cli("compare", str(cfg), "--no-progress") == 0
    err = capsys.readouterr().err
    assert "served: tiny at" in err and "6 captioned with 6 call(s)" in err
    comp = json.loads((out / "comparison.json").read_text())
    local_sys, served = comp["systems"]
    assert served["kind"] == "api" and served["source"] == f"api:tiny@{server.base_url}"
    rows = {n: [json.loads(line) for line in (out / "systems" / n / "predictions.jsonl").read_text().splitlines()]
            for n in ("local", "served")}
    assert [r["prediction"] for r in rows["served"]] == [r["prediction"] for r in rows["local"]]
    for metric, value in served["metrics"].items():  # the same captions: the same scores, p = 1
        assert value["value"] == local_sys["metrics"][metric]["value"]
    assert served["metrics"]["CIDEr"]["p_value"] is not None
    assert medblip_cli("compare", str(cfg), "--no-progress") == 0  # resumes: no new call
    assert "served: tiny at" not in capsys.readouterr().err


def _readme_python(marker: str) -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    (block,) = [b for b in blocks if marker in b]
    return block


@pytest.mark.parametrize("marker", ["from openai import OpenAI", "from medblip.models.api import ApiCaptioner"])
def test_readme_api_examples_run(marker, server, synth_jpegs, local, tmp_path, monkeypatch, capsys):
    """The README's Python examples, run as written against the test server (its URL and model name)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDBLIP_CACHE", str(tmp_path / "cache"))  # not the user's ~/.cache
    (tmp_path / "scan.png").write_bytes(_png(synth_jpegs[4]))
    code = _readme_python(marker)
    assert "http://127.0.0.1:7860/v1" in code and "roco-blip-full/best" in code
    exec(code.replace("http://127.0.0.1:7860/v1", server.base_url).replace("roco-blip-full/best", "tiny"), {})
    assert local(_png(synth_jpegs[4])) in capsys.readouterr().out


# -- safety: the key, the queue limit, other hosts -----------------------------------------------------
def test_key_and_queue_limit(served_blip_dir, synth_jpegs, local, tmp_path, monkeypatch):
    from medblip.models.api import ApiCaptioner

    args = ["--model", f"tiny={served_blip_dir}", "--max-new-tokens", str(MAX_NEW_TOKENS),
            "--max-queue", "1", "--max-batch", "1", "--batch-wait-ms", "0"]
    with ServerProcess(args, env={"MEDBLIP_API_KEY": "s3cret"}, log_path=tmp_path / "server.log") as srv:
        if CHROMIUM is not None:
            _page_asks_for_the_key(srv.url)
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            resp = httpx.get(srv.base_url + "/models", headers=headers)
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
        keyed = {"Authorization": "Bearer s3cret"}
        assert httpx.get(srv.base_url + "/models", headers=keyed).json()["data"][0]["id"] == "tiny"

        body = {"model": "tiny", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": _uri(synth_jpegs[0], "image/jpeg")}}]}]}
        answers: list[httpx.Response] = []
        go = threading.Barrier(12)

        def send() -> None:
            go.wait()
            answers.append(httpx.post(srv.base_url + "/chat/completions", json=body, headers=keyed, timeout=60))

        threads = [threading.Thread(target=send) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(answers) == 12 and {a.status_code for a in answers} <= {200, 503}
        busy = [a for a in answers if a.status_code == 503]
        assert busy and all(a.headers["retry-after"] == "1" and a.json()["error"]["code"] == "queue_full" for a in busy)
        assert all(a.json()["choices"][0]["message"]["content"] == local(synth_jpegs[0])
                   for a in answers if a.status_code == 200)

        monkeypatch.setenv("MEDBLIP_TEST_KEY", "s3cret")
        captioner = ApiCaptioner(base_url=srv.base_url, model="tiny", api_key_env="MEDBLIP_TEST_KEY",
                                 cache_dir=False, concurrency=8)
        assert captioner.generate([load_image(j) for j in synth_jpegs]) == [local(j) for j in synth_jpegs]
        assert captioner.stats.failures == 0 and captioner.stats.retries == captioner.stats.http_status[503]


def _page_asks_for_the_key(url: str) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            for password in ("wrong", "s3cret"):
                page.fill("input[type=text]", "colleague")
                page.fill("input[type=password]", password)
                page.get_by_role("button", name="Login").click()
                if password == "wrong":
                    page.wait_for_selector("text=Incorrect Credentials", timeout=30_000)
                    assert page.locator("#upload").count() == 0
            page.wait_for_selector("#upload input[type=file]", state="attached", timeout=60_000)
        finally:
            browser.close()


def test_other_hosts_are_warned_about(served_blip_dir, medblip_cli, capsys, tmp_path):
    missing = tmp_path / "no-such-model"
    port = str(free_port("0.0.0.0"))
    assert medblip_cli("serve", "--model", str(missing), "--host", "0.0.0.0", "--port", port) == 2
    err = capsys.readouterr().err
    assert "medblip: warning: serving on 0.0.0.0" in err and "no key" in err
    assert "medblip: error:" in err  # then the missing model stops it, before anything listens
