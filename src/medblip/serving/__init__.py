"""``medblip serve``: a web page and an OpenAI-compatible API for captioning models, on one port.

* :mod:`~medblip.serving.limits` - what a request may send (size, pixels, data URIs; remote URLs only
  when allowed) and decoding it; nothing a request names is read from the server's disk.
* :mod:`~medblip.serving.batching` - the micro-batching queue: concurrent requests share one forward
  pass; a full queue answers 503 with Retry-After.
* :mod:`~medblip.serving.served` - loading the served models, one batcher and lock each.
* :mod:`~medblip.serving.openai_api` - ``/v1/models`` and ``/v1/chat/completions``, OpenAI-shaped errors.
* :mod:`~medblip.serving.analysis` / :mod:`~medblip.serving.page` / :mod:`~medblip.serving.examples` -
  the Gradio page: caption, clinical concepts, attention overlay per word.
* :mod:`~medblip.serving.app` - the FastAPI app with the page mounted, run by uvicorn.
* :mod:`~medblip.serving.process` - ``medblip serve`` in a child process, for scripts, benchmarks, tests.

The client side (captioning through any OpenAI-compatible endpoint, this one included) is
:class:`medblip.models.api.ApiCaptioner`. FastAPI, uvicorn and Gradio come with the ``serve`` extra
and are imported only when a server is built.
"""
