"""The pieces of ``medblip serve`` without a server: upload limits and image sources, the
micro-batching queue on a real tiny model, what the page shows, the built-in examples."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import threading

import pytest
from PIL import Image

from medblip.errors import MedblipError
from medblip.evaluation import extract_concepts
from medblip.models.base import GenerationSettings
from medblip.serving.batching import MicroBatcher, QueueFull
from medblip.serving.limits import UploadError, UploadLimits, decode_image, host_warning, image_bytes_from_url

SETTINGS = GenerationSettings(max_new_tokens=12)


@pytest.fixture(scope="module")
def adapter(served_blip_dir):
    from medblip.models import create_model

    return create_model(served_blip_dir)


def _png(jpeg: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buf, format="PNG")
    return buf.getvalue()


# -- limits and sources ----------------------------------------------------------------------------
def test_decode_png_jpeg_and_dicom(synth_jpegs, ct_dicom):
    for data in (synth_jpegs[0], _png(synth_jpegs[0]), ct_dicom):
        image = decode_image(data, UploadLimits())
        assert image.mode == "RGB" and min(image.size) == 128


@pytest.mark.parametrize(("make", "limits", "code", "message"), [
    (lambda j, d: j, UploadLimits(max_bytes=1000), "image_too_large", r"exceeds this server's limit of 0\.0 MB"),
    (lambda j, d: j, UploadLimits(max_pixels=128 * 127), "image_too_large", r"128x128 = 16,384 pixels exceeds .*--max-pixels"),
    (lambda j, d: b"Patient notes, not an image.\n", UploadLimits(), "invalid_image", "not a recognised image format"),
    (lambda j, d: d[: len(d) // 2], UploadLimits(), "invalid_image", "cannot decode DICOM pixel data"),
    (lambda j, d: b"", UploadLimits(), "invalid_image", "empty image"),
])
def test_uploads_refused_with_a_reason(synth_jpegs, ct_dicom, make, limits, code, message):
    with pytest.raises(UploadError, match=message) as info:
        decode_image(make(synth_jpegs[0], ct_dicom), limits, name="upload.bin")
    assert info.value.code == code and "\n" not in str(info.value)


def test_data_uri_is_the_only_default_source(synth_jpegs, tmp_path):
    jpeg = synth_jpegs[1]
    uri = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    assert image_bytes_from_url(uri, UploadLimits()) == jpeg
    secret = tmp_path / "secret.png"
    secret.write_bytes(jpeg)
    refusals = {
        f"file://{secret}": "invalid_image_url", str(secret): "invalid_image_url",
        "http://127.0.0.1:9/x.png": "remote_image_refused", "data:image/png,rawbytes": "invalid_image_url",
        "data:image/png;base64,@@@not-base64@@@": "invalid_image_url",
    }
    for url, code in refusals.items():
        with pytest.raises(UploadError) as info:
            image_bytes_from_url(url, UploadLimits())
        assert info.value.code == code, url
    with pytest.raises(UploadError, match="exceeds"):  # refused from its length, before decoding
        image_bytes_from_url(uri, UploadLimits(max_bytes=len(jpeg) // 2))


@pytest.fixture
def http_folder(tmp_path):
    """A real HTTP server over ``tmp_path`` (what --allow-remote-images fetches from)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_images_only_when_allowed(http_folder, synth_jpegs):
    folder, url = http_folder
    (folder / "ct.jpg").write_bytes(synth_jpegs[2])
    allowed = UploadLimits(allow_remote=True)
    assert image_bytes_from_url(f"{url}/ct.jpg", allowed) == synth_jpegs[2]
    with pytest.raises(UploadError) as info:
        image_bytes_from_url(f"{url}/ct.jpg", UploadLimits())
    assert info.value.code == "remote_image_refused"
    with pytest.raises(UploadError, match="HTTP 404") as info:
        image_bytes_from_url(f"{url}/missing.jpg", allowed)
    assert info.value.code == "image_fetch_failed"
    with pytest.raises(UploadError) as info:
        image_bytes_from_url(f"{url}/ct.jpg", UploadLimits(allow_remote=True, max_bytes=100))
    assert info.value.code == "image_too_large"


def test_host_warning():
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert host_warning(host, None) is None
    open_warning = host_warning("0.0.0.0", None)
    assert open_warning and "no key" in open_warning and "--api-key" in open_warning
    keyed = host_warning("192.168.1.20", "k")
    assert keyed and "TLS" in keyed and "no key" not in keyed


# -- micro-batching ----------------------------------------------------------------------------
def test_concurrent_requests_share_one_forward_pass(adapter, synth_jpegs):
    images = [decode_image(j, UploadLimits()) for j in synth_jpegs[:6]]
    alone = [adapter.generate([im], SETTINGS)[0] for im in images]
    assert len(set(alone)) > 1  # the images get different captions, so a mix-up would show
    batcher = MicroBatcher(adapter.generate, max_batch=8, max_wait=1.0)
    try:
        futures = [batcher.submit(im, SETTINGS) for im in images]
        assert [f.result(60) for f in futures] == alone
        stats = batcher.stats()
    finally:
        batcher.close()
    assert stats["batches"] == 1 and stats["batch_sizes"] == {6: 1} and stats["requests"] == 6


def test_batches_hold_one_setting_each(adapter, synth_jpegs):
    image = decode_image(synth_jpegs[0], UploadLimits())
    short = GenerationSettings(max_new_tokens=3)
    batcher = MicroBatcher(adapter.generate, max_batch=8, max_wait=0.5)
    try:
        futures = [batcher.submit(image, s) for s in (SETTINGS, short, SETTINGS, short)]
        captions = [f.result(60) for f in futures]
        stats = batcher.stats()
    finally:
        batcher.close()
    assert captions[0] == captions[2] == adapter.generate([image], SETTINGS)[0]
    assert captions[1] == captions[3] == adapter.generate([image], short)[0]
    assert stats["batch_sizes"] == {2: 2}


def test_full_queue_refuses_at_once(adapter, synth_jpegs):
    image = decode_image(synth_jpegs[0], UploadLimits())
    batcher = MicroBatcher(adapter.generate, max_batch=1, max_wait=0.0, max_queue=2)
    try:
        with batcher.lock:  # the model is busy: the worker takes the first request and waits for the lock
            first = batcher.submit(image, SETTINGS)
            while batcher.stats()["waiting"]:
                threading.Event().wait(0.005)
            waiting = [batcher.submit(image, SETTINGS) for _ in range(2)]
            with pytest.raises(QueueFull, match="busy") as info:
                batcher.submit(image, SETTINGS)
            assert info.value.retry_after >= 1
            with pytest.raises(QueueFull):  # what a server asks before decoding an image
                batcher.check_room()
        assert len({f.result(60) for f in [first, *waiting]}) == 1
        batcher.check_room()
        assert batcher.stats()["rejected"] == 2
    finally:
        batcher.close()


def test_a_failing_batch_fails_each_request_and_the_worker_goes_on(adapter, synth_jpegs):
    image = decode_image(synth_jpegs[0], UploadLimits())
    bad = GenerationSettings(max_new_tokens=4, repetition_penalty=-1.0)  # transformers refuses it
    batcher = MicroBatcher(adapter.generate, max_wait=0.2)
    try:
        futures = [batcher.submit(image, bad) for _ in range(2)]
        for f in futures:
            with pytest.raises(ValueError, match="penalty"):
                f.result(60)
        assert batcher.submit(image, SETTINGS).result(60) == adapter.generate([image], SETTINGS)[0]
    finally:
        batcher.close()


# -- what the page shows ---------------------------------------------------------------------------
def test_finding_words_come_first():
    from medblip.serving.analysis import word_order

    caption = "Axial CT shows a nodule in the left lung and no pleural effusion ."
    words = caption.split()
    order, finding = word_order(words, extract_concepts(caption))
    assert [words[i] for i in order[:3]] == ["nodule", "pleural", "effusion"]
    assert finding == {4, 11, 12} and "." not in [words[i] for i in order]
    assert sorted(order[3:]) == order[3:]


def test_concepts_table():
    from medblip.serving.analysis import concepts_markdown

    md = concepts_markdown(extract_concepts("Axial CT shows a nodule in the left lung and no pleural effusion."))
    assert "| modality | CT |" in md and "| side | left |" in md
    assert 'nodule (present); effusion (negated, "no")' in md and "lung" in md


def test_analyse_gives_the_batcher_caption_and_one_overlay_per_word(served_blip_dir, synth_jpegs, adapter):
    from medblip.serving.analysis import DISPLAY_SIDE, analyse
    from medblip.serving.served import load_models

    (model,) = load_models([f"tiny={served_blip_dir}"], SETTINGS)
    try:
        image = decode_image(synth_jpegs[3], UploadLimits()).resize((600, 450))
        result = analyse(model, image)
    finally:
        model.close()
    assert result.model == "tiny" and result.caption == adapter.generate([image], SETTINGS)[0]
    assert result.note is None and len(result.overlays) == len({o.index for o in result.overlays}) > 1
    assert [o.finding for o in result.overlays] == sorted((o.finding for o in result.overlays), reverse=True)
    for o in result.overlays:
        assert o.word in result.caption
        assert o.image.size == (DISPLAY_SIDE, 288) and 0 <= o.raw_min <= o.raw_max
        assert f"{o.raw_min:.2g}–{o.raw_max:.2g}" in o.label


def test_model_names(served_blip_dir):
    from medblip.serving.served import load_models, parse_model_spec

    assert parse_model_spec("fine=runs/a") == ("fine", "runs/a")
    assert parse_model_spec("runs/a=b") == (None, "runs/a=b")  # not a name: the whole thing is a path
    with pytest.raises(MedblipError, match="two models are named 'x'; name them"):
        load_models([f"x={served_blip_dir}", f"x={served_blip_dir}"], SETTINGS)
    with pytest.raises(MedblipError, match="at least one --model"):
        load_models([], SETTINGS)


def test_examples_cover_modalities_and_decode():
    from medblip.serving.examples import synthetic_examples

    examples = synthetic_examples()
    modalities = {e.label.split()[0] for e in examples}
    assert len(examples) >= 5 and len(modalities) == len(examples)
    for e in examples:
        assert e.reference and decode_image(e.data, UploadLimits()).size == (256, 256)
