"""The API captioner and the compare config's ``api:`` systems, without a server (the real calls
against ``medblip serve`` are in test_serve_e2e.py)."""

from __future__ import annotations

import pytest
from PIL import Image

from medblip.errors import ConfigError
from medblip.experiments.compare import load_compare_config
from medblip.models.api import DEFAULT_PROMPT, ApiCaptioner, ApiCaptionError, ApiConfig
from medblip.serving.process import free_port

GOOD = """
data: data
reference: local
systems:
  - name: local
    model: some/model
  - name: gemini
    api:
      base_url: https://generativelanguage.googleapis.com/v1beta/openai/
      model: gemini-1.5-flash
      api_key_env: GEMINI_API_KEY
      requests_per_minute: 15
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    return tmp_path


def _load(workdir, text):
    path = workdir / "cmp.yaml"
    path.write_text(text, encoding="utf-8")
    return load_compare_config(path)


def test_api_system_in_a_compare_config(workdir):
    cfg = _load(workdir, GOOD)
    api = cfg.systems[1]
    assert [s.kind for s in cfg.systems] == ["model", "api"]
    assert api.api.model == "gemini-1.5-flash" and api.api.prompt == DEFAULT_PROMPT and api.api.concurrency == 4


@pytest.mark.parametrize(("edit", "pattern"), [
    (("requests_per_minute: 15", "requests_per_minute: 15\n      base_ur: x"), r"systems\[1\]\.api\.base_ur: unknown key"),
    (("requests_per_minute: 15", "requests_per_minute: 0"), r"systems\[1\]\.api\.requests_per_minute: .*greater than 0"),
    (("  - name: gemini\n", "  - name: gemini\n    generation: {num_beams: 2}\n"),
     r"systems\[1\]: .*'generation' only applies to a 'model' system .*api block"),
    (("  - name: gemini\n", "  - name: gemini\n    family: blip\n"), r"systems\[1\]: 'family' only applies to a 'model' system"),
    (("  - name: gemini\n", "  - name: gemini\n    model: x/y\n"), r"systems\[1\]: .*exactly one of 'model', 'api' or 'predictions'"),
    (("data: data\n", ""), r"data: required: system 'local'"),
])
def test_api_system_errors_name_the_key(workdir, edit, pattern):
    with pytest.raises(ConfigError, match=r"cmp\.yaml: " + pattern):
        _load(workdir, GOOD.replace(*edit))


def test_settings_mirror_the_config():
    c = ApiCaptioner(base_url="http://x/v1", model="m", prompt="Caption it.", max_tokens=50, temperature=0.4,
                     cache_dir=False)
    assert (c.settings.prompt, c.settings.max_new_tokens, c.settings.do_sample, c.settings.temperature) == \
        ("Caption it.", 50, True, 0.4)
    assert c.family == "api" and c.name_or_path == "api:m@http://x/v1"
    assert not ApiCaptioner(base_url="http://x/v1", model="m", cache_dir=False).settings.do_sample


def test_missing_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("MEDBLIP_TEST_NO_SUCH_KEY", raising=False)
    c = ApiCaptioner(ApiConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="MEDBLIP_TEST_NO_SUCH_KEY",
                               cache_dir=False))
    with pytest.raises(ApiCaptionError, match="environment variable MEDBLIP_TEST_NO_SUCH_KEY is not set"):
        c.generate([Image.new("RGB", (8, 8))])


def test_unreachable_endpoint_is_retried_then_reported(tmp_path):
    port = free_port()  # nothing listens there: connection refused, a network error worth retrying
    c = ApiCaptioner(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=2, backoff=0.0,
                     cache_dir=str(tmp_path / "cache"), concurrency=2)
    images = [Image.new("RGB", (8, 8), (i, i, i)) for i in range(3)]
    with pytest.raises(ApiCaptionError, match=r"3 of 3 image\(s\) got no caption from m: ConnectError.*after 2 retries"):
        c.generate(images)
    s = c.stats
    assert (s.images, s.calls, s.retries, s.failures, s.captioned) == (3, 9, 6, 3, 0)
    assert not list((tmp_path / "cache").rglob("*.json"))  # failures are not cached
    assert "3 failed" in c.summary_text()


def test_compare_roco_gemini_block_validates():
    """configs/compare_roco.yaml's commented Gemini system, uncommented, is a valid api system."""
    from pathlib import Path

    import yaml

    from medblip.experiments.compare import CompareConfig

    text = (Path(__file__).resolve().parents[1] / "configs" / "compare_roco.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    start = lines.index("  # - name: gemini-1.5-flash")
    block = []
    for line in lines[start:]:
        if not line.strip():  # the block ends at the blank line
            break
        if not line.startswith("  #     #"):  # comments inside the block stay comments
            block.append("  " + line[4:])
    uncommented = "\n".join(lines[:start] + block + lines[start:])
    cfg = CompareConfig.model_validate(yaml.safe_load(uncommented))
    (gemini,) = [s for s in cfg.systems if s.name == "gemini-1.5-flash"]
    assert gemini.kind == "api" and gemini.api.model == "gemini-1.5-flash"
    assert gemini.api.api_key_env == "GEMINI_API_KEY" and gemini.api.requests_per_minute == 15
    assert gemini.api.base_url.endswith("/v1beta/openai/") and gemini.api.prompt == DEFAULT_PROMPT
