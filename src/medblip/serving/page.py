"""The web page (Gradio): upload an image or pick a synthetic example; caption, concepts, overlays.

Uploads go through the same limits and decoder as the API (:mod:`medblip.serving.limits`); a file
that is too large, not an image, or a broken DICOM gets its one-line reason in the status box
(``#status``) instead of a caption. Element ids (``#upload``, ``#example``, ``#model``, ``#caption``,
``#concepts``, ``#overlays``, ``#status``) are stable for browser tests.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medblip.serving.analysis import analyse, colorbar_image, concepts_markdown, display_copy
from medblip.serving.batching import QueueFull
from medblip.serving.examples import Example
from medblip.serving.limits import UploadError, UploadLimits, decode_image
from medblip.serving.served import ServedModel

log = logging.getLogger(__name__)

INTRO = ("## medblip · radiology image captioning\n"
         "Upload a PNG, JPEG or DICOM image, or pick a built-in synthetic example. The model's caption, the "
         "clinical concepts medblip reads in it, and where the model looked for each word (decoder "
         "cross-attention; finding words first). A research demo: not for diagnosis.")
NO_IMAGE = "Upload an image or pick an example."


def build_page(models: Sequence[ServedModel], limits: UploadLimits, examples: Sequence[Example]) -> Any:
    """The Gradio Blocks of the page (mount it with ``gr.mount_gradio_app``)."""
    import gradio as gr

    by_name = {m.name: m for m in models}
    names = list(by_name)
    by_label = {e.label: e for e in examples}

    def run(data: bytes | None, name: str | None, source: str) -> tuple[Any, ...]:
        if data is None:
            return NO_IMAGE, None, "", "", []
        model = by_name.get(name or "") or models[0]
        try:
            image = decode_image(data, limits, name=source)
            result = analyse(model, image)
        except UploadError as exc:
            return f"**Cannot use this file.** {exc}", None, "", "", []
        except QueueFull:
            return "**The server is busy.** Try again in a moment.", None, "", "", []
        except Exception as exc:  # noqa: BLE001 - shown to the visitor; the trace goes to the server log
            log.exception("page: analysing %s failed", source)
            return f"**Captioning failed** ({type(exc).__name__}: {exc}).", None, "", "", []
        status = f"Captioned by **{model.name}** ({model.adapter.family})."
        if result.note:
            status += f" {result.note[0].upper()}{result.note[1:]}."
        gallery = [(o.image, o.label) for o in result.overlays]
        return status, display_copy(image)[0], result.caption, concepts_markdown(result.concepts), gallery

    def show(current: tuple[bytes, str] | None, name: str | None) -> tuple[Any, ...]:
        """The outputs for the current image (bytes and where they came from) under model ``name``."""
        if current is None:
            return run(None, name, "")
        data, source = current
        status, *rest = run(data, name, source)
        example = by_label.get(source)
        if example is not None and status.startswith("Captioned"):
            status += f" Reference caption: *{example.reference}*"
        return status, *rest

    def on_upload(path: str | None, name: str | None) -> tuple[Any, ...]:
        if not path:
            return None, *show(None, name)
        source = os.path.basename(path)
        try:
            limits.check_size(os.path.getsize(path), source)
        except UploadError as exc:
            return None, f"**Cannot use this file.** {exc}", None, "", "", []
        current = (Path(path).read_bytes(), source)
        return current, *show(current, name)

    def on_example(label: str | None, name: str | None) -> tuple[Any, ...]:
        example = by_label.get(label or "")
        current = (example.data, example.label) if example else None
        return current, *show(current, name)

    with gr.Blocks(title="medblip", analytics_enabled=False, delete_cache=(900, 900)) as page:
        current = gr.State(None)
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(names, value=names[0], label="Model", visible=len(names) > 1, elem_id="model")
                upload = gr.File(label="Image (PNG, JPEG or DICOM)", type="filepath", elem_id="upload")
                example = gr.Dropdown(list(by_label), value=None, label="…or a built-in synthetic example",
                                      elem_id="example")
                preview = gr.Image(label="Image", type="pil", interactive=False, elem_id="preview")
            with gr.Column(scale=2):
                status = gr.Markdown(NO_IMAGE, elem_id="status")
                caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption")
                concepts = gr.Markdown(elem_id="concepts")
                overlays = gr.Gallery(label="Cross-attention of each word (finding words first; numbers: the raw range of its map)", columns=4,
                                      elem_id="overlays", interactive=False, format="png")
                gr.Image(colorbar_image(), label="Colour scale", interactive=False, elem_id="colorbar",
                         show_label=True)
        shown = [status, preview, caption, concepts, overlays]
        upload.upload(on_upload, [upload, model], [current, *shown], api_visibility="private")
        example.input(on_example, [example, model], [current, *shown], api_visibility="private")
        model.input(show, [current, model], shown, api_visibility="private")
    return page.queue(default_concurrency_limit=8)
