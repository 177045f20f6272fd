"""load_image on every mode and on the bad-input corpus (built here, in tmp_path)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import set_pixel_data
from pydicom.uid import (
    MPEG2MPML,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    generate_uid,
)

from medblip.data import load_image, probe_image
from medblip.errors import ImageError

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


# ---------------------------------------------------------------------------------------------
# Modes

def test_rgb_jpeg_from_path_and_bytes(tmp_path, write_image):
    path = write_image(tmp_path / "a.jpg", size=(40, 30))
    img = load_image(path)
    assert (img.mode, img.size) == ("RGB", (40, 30))
    assert load_image(path.read_bytes()).size == (40, 30)
    assert load_image(str(path)).mode == "RGB"


@pytest.mark.parametrize("mode", ["L", "P", "1"])
def test_gray_palette_and_bilevel_become_gray_rgb(tmp_path, mode):
    arr = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))
    img = Image.fromarray(arr, mode="L").convert(mode)
    out = np.asarray(load_image(_save(img, tmp_path / "x.png")))
    assert out.shape == (4, 16, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    if mode == "L":
        assert (out[..., 0] == arr).all()


def test_16bit_png_is_rescaled_by_min_max_not_clipped(tmp_path):
    arr = np.array([[1000, 10750, 20500, 40000]], dtype=np.uint16)
    path = _save(Image.fromarray(arr), tmp_path / "ct16.png")
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    out = np.asarray(load_image(path))[0, :, 0]
    # (v - 1000) / 39000 * 255: 0, 63.75, 127.5, 255 -> no saturation at 255 for everything > 255.
    assert out.tolist() == [0, 64, 128, 255]


def test_16bit_tiff_and_float_tiff(tmp_path):
    arr16 = np.array([[0, 30000, 60000]], dtype=np.uint16)
    out = np.asarray(load_image(_save(Image.fromarray(arr16), tmp_path / "a.tif")))[0, :, 0]
    assert out.tolist() == [0, 128, 255]
    arrf = np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)
    out = np.asarray(load_image(_save(Image.fromarray(arrf, mode="F"), tmp_path / "f.tif")))[0, :, 0]
    assert out.tolist() == [0, 128, 255]


def test_constant_16bit_image_is_black_not_an_error(tmp_path):
    path = _save(Image.fromarray(np.full((3, 3), 5000, dtype=np.uint16)), tmp_path / "flat.png")
    assert np.asarray(load_image(path)).max() == 0


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    r, g, b = np.asarray(load_image(path)).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60  # cyan 0, magenta+yellow full -> red


def test_rgba_png_is_composited_on_black(tmp_path):
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 255, 255, 0)      # transparent white -> black
    rgba[0, 1] = (255, 255, 255, 255)    # opaque white -> white
    rgba[0, 2] = (200, 100, 50, 128)     # half transparent -> about half intensity
    out = np.asarray(load_image(_save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "a.png")))[0]
    assert out[0].tolist() == [0, 0, 0]
    assert out[1].tolist() == [255, 255, 255]
    assert np.allclose(out[2], [100, 50, 25], atol=2)


def test_la_and_transparent_palette(tmp_path):
    la = Image.fromarray(np.array([[[255, 0], [255, 255]]], dtype=np.uint8), mode="LA")
    out = np.asarray(load_image(_save(la, tmp_path / "la.png")))[0, :, 0]
    assert out.tolist() == [0, 255]
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 255, 255, 0, 255, 0])
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    out = np.asarray(load_image(_save(pal, tmp_path / "p.png", transparency=0)))[0]
    assert out[0].tolist() == [0, 0, 0] and out[1].tolist() == [0, 255, 0]


# ---------------------------------------------------------------------------------------------
# Bad input

def test_truncated_jpeg_names_file_and_reason(tmp_path, image_bytes):
    data = image_bytes(size=(128, 128), fmt="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg: cannot decode JPEG data \(.*truncated"):
        load_image(path)


def test_zero_byte_missing_and_garbage_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: empty file \(0 bytes\)"):
        load_image(empty)
    with pytest.raises(ImageError, match=r"nope\.jpg: file not found"):
        load_image(tmp_path / "nope.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    with pytest.raises(ImageError, match=r"notes\.jpg: not a recognised image format"):
        load_image(text)
    with pytest.raises(ImageError, match=r"empty image \(0 bytes\)"):
        load_image(b"")
    with pytest.raises(ImageError, match=r"row 7: not a recognised image format"):
        load_image(b"garbage bytes", name="train.parquet row 7")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims a huge image, followed by a tiny IDAT: no giant allocation anywhere."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + _chunk(b"IEND", b""))


def test_huge_png_header_triggers_pixel_guard(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(10_000, 10_000))  # 100 Mpx: above our 64 Mpx default
    with pytest.raises(ImageError, match=r"bomb\.png: 10000x10000 = 100,000,000 pixels exceeds the limit"):
        load_image(path)
    path.write_bytes(_png_header(50_000, 50_000))  # beyond PIL's own hard limit as well
    with pytest.raises(ImageError, match=r"bomb\.png: too many pixels .*decompression bomb"):
        load_image(path)
    assert probe_image(_png_header(3000, 2000)).width == 3000  # the header alone is fine to probe


def test_pixel_guard_is_configurable(tmp_path, write_image):
    path = write_image(tmp_path / "a.png", size=(20, 10))
    with pytest.raises(ImageError, match="200 pixels exceeds the limit of 100"):
        load_image(path, max_pixels=100)
    assert load_image(path, max_pixels=None).size == (20, 10)


# ---------------------------------------------------------------------------------------------
# DICOM

def _dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12,
           preamble: bool = True, **attrs) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    set_pixel_data(ds, arr, photometric, bits)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=preamble)
    return path


def test_dicom_rescale_and_window(tmp_path):
    # Stored values are HU + 1024; the window is centre 40, width 400 -> [-160, 240] HU.
    hu = np.array([[-1000, -160, 40, 240, 1000]], dtype=np.int32)
    path = _dicom(tmp_path / "ct.dcm", (hu + 1024).astype(np.uint16), RescaleSlope=1,
                  RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    out = np.asarray(load_image(path))[0, :, 0]
    assert out[0] == 0 and out[1] <= 1          # air and the window floor are black
    assert abs(int(out[2]) - 128) <= 1          # the centre is mid-grey
    assert out[3] >= 254 and out[4] == 255      # the window top and bone are white


def test_dicom_without_window_uses_min_max_and_monochrome1_inverts(tmp_path):
    arr = np.array([[0, 1000, 2000]], dtype=np.uint16)
    mono2 = np.asarray(load_image(_dicom(tmp_path / "m2.dcm", arr)))[0, :, 0]
    mono1 = np.asarray(load_image(_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1")))[0, :, 0]
    assert mono2.tolist() == [0, 128, 255]
    assert mono1.tolist() == [255, 127, 0]


def test_dicom_is_detected_by_preamble_not_extension(tmp_path):
    arr = np.array([[0, 4095]], dtype=np.uint16)
    path = _dicom(tmp_path / "scan_without_extension", arr)
    assert path.read_bytes()[128:132] == b"DICM"
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 255]
    assert probe_image(path.read_bytes()).format == "DICOM"


def test_dicom_multiframe_uses_middle_frame(tmp_path):
    frames = np.zeros((3, 4, 4), dtype=np.uint16)
    frames[0, :, :2] = 1000   # left half bright
    frames[1, :2, :] = 1000   # top half bright: the middle frame
    frames[2, :, 2:] = 1000   # right half bright
    out = np.asarray(load_image(_dicom(tmp_path / "cine.dcm", frames)))[..., 0]
    assert (out[:2] == 255).all() and (out[2:] == 0).all()


def _compressed_dicom(path: Path, syntax) -> Path:
    path = _dicom(path, np.zeros((8, 8), dtype=np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    return path


def test_dicom_unsupported_transfer_syntax_names_file_and_syntax(tmp_path):
    path = _compressed_dicom(tmp_path / "video.dcm", MPEG2MPML)
    with pytest.raises(ImageError, match=r"video\.dcm: unsupported DICOM transfer syntax MPEG2 Main "
                                         r"Profile / Main Level \(1\.2\.840\.10008\.1\.2\.4\.100\)"):
        load_image(path)


def test_dicom_compressed_without_installed_decoder(tmp_path):
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    path = _compressed_dicom(tmp_path / "jls.dcm", JPEGLSLossless)
    with pytest.raises(ImageError, match=r"jls\.dcm: unsupported DICOM transfer syntax JPEG-LS Lossless.*"
                                         r"no decoder installed \(needs one of: .*pylibjpeg"):
        load_image(path)


def test_dicom_guard_and_missing_pixels(tmp_path):
    path = _dicom(tmp_path / "big.dcm", np.zeros((20, 30), dtype=np.uint16))
    with pytest.raises(ImageError, match=r"big\.dcm: 30x20 = 600 pixels exceeds the limit of 500"):
        load_image(path, max_pixels=500)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(ImageError, match=r"nopix\.dcm: DICOM file has no pixel data"):
        load_image(tmp_path / "nopix.dcm")


def test_real_pydicom_sample_files_decode():
    ct = PYDICOM_FILES / "CT_small.dcm"
    rle = PYDICOM_FILES / "MR_small_RLE.dcm"
    if not ct.is_file() or not rle.is_file():
        pytest.skip("pydicom's bundled test files are absent")
    img = load_image(ct)
    assert img.mode == "RGB" and img.size == (128, 128)
    arr = np.asarray(img)
    assert arr.min() == 0 and arr.max() == 255  # full contrast after windowing/rescale
    assert load_image(rle).size == (64, 64)
    info = probe_image(ct)
    assert (info.width, info.format) == (128, "DICOM") and "MONOCHROME2" in info.mode


def test_probe_reads_only_the_header(tmp_path, image_bytes):
    data = image_bytes(size=(64, 48), fmt="PNG")
    info = probe_image(io.BytesIO(data).getvalue())
    assert (info.width, info.height, info.mode, info.format) == (64, 48, "RGB", "PNG")
