"""Session fixtures for the serving tests (``medblip serve``, the API captioner).

- ``served_blip_dir``: a tiny random BLIP whose vision weights have an ordinary scale, so different
  images get different captions (``init_tiny``'s default 1e-10 gives every image the same one).
- ``synth_jpegs``: eight synthetic radiology studies as the JPEG bytes the benchmark writes.
- ``ct_dicom``: a real CT slice in DICOM (pydicom's test data).
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: the generation settings test servers run with (``--max-new-tokens``), and local captioning too
MAX_NEW_TOKENS = 12


@pytest.fixture(scope="session")
def served_blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medblip.models import init_tiny

    return init_tiny("blip", tmp_path_factory.mktemp("served") / "tiny-blip", image_size=64, seed=0,
                     vision_init_std=0.02)


@pytest.fixture(scope="session")
def synth_jpegs() -> list[bytes]:
    from medblip.data.synth import render_record

    return [render_record(0, i, 128)[1] for i in range(8)]


@pytest.fixture(scope="session")
def ct_dicom() -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm")).read_bytes()
