"""Decode any radiology image (JPEG/PNG/TIFF in any mode, DICOM) to an 8-bit RGB PIL image.

Every failure becomes an :class:`~medblip.errors.ImageError` whose message names the file and the
reason, so a loader or the CLI can report it in one line.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from medblip.errors import ImageError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset as DicomDataset

DEFAULT_MAX_PIXELS = 64_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".dcm", ".dicom")
_DICOM_SUFFIXES = (".dcm", ".dicom")
_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

ImageSource = Path | str | bytes


@dataclass(frozen=True)
class ImageInfo:
    """What a file header says, without decoding pixels (for statistics)."""

    width: int
    height: int
    mode: str  # PIL mode, or "DICOM <PhotometricInterpretation> <BitsStored>-bit"
    format: str  # "JPEG", "PNG", "DICOM", ...


def _describe(source: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, bytes):
        return f"<{len(source)} bytes in memory>"
    return str(source)


def _read_head(source: ImageSource, label: str) -> tuple[bytes, bool]:
    """First 132 bytes (enough for the DICOM preamble) and whether the source is a DICOM file."""
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"{label}: empty image (0 bytes)")
        head = source[:132]
        return head, head[128:132] == b"DICM"
    path = Path(source)
    if not path.exists():
        raise ImageError(f"{label}: file not found")
    if not path.is_file():
        raise ImageError(f"{label}: not a regular file")
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise ImageError(f"{label}: cannot read ({exc.strerror or exc})") from None
    if not head:
        raise ImageError(f"{label}: empty file (0 bytes)")
    # Some DICOM writers omit the 128-byte preamble; trust the extension then.
    return head, head[128:132] == b"DICM" or path.suffix.lower() in _DICOM_SUFFIXES


def _open_binary(source: ImageSource) -> IO[bytes]:
    return io.BytesIO(source) if isinstance(source, bytes) else Path(source).open("rb")


def _check_pixels(width: int, height: int, max_pixels: int | None, label: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"{label}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                         f"{max_pixels:,} (possible decompression bomb; raise max_pixels to allow it)")


# ---------------------------------------------------------------------------------------------
# Raster formats through PIL

def _open_pil(fh: IO[bytes], label: str) -> Image.Image:
    # Our own max_pixels check replaces PIL's global guard; PIL's hard error (twice its own limit)
    # still fires for absurd headers, and we turn it into an ImageError as well.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(fh)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{label}: too many pixels ({exc}); possible decompression bomb") from None
        except UnidentifiedImageError:
            raise ImageError(f"{label}: not a recognised image format (JPEG, PNG, TIFF, DICOM, ...)") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{label}: unreadable image header ({exc})") from None


def _to_uint8(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Rescale to 0..255 over [lo, hi] (default: the array's own min/max) instead of clipping."""
    arr = np.asarray(arr, dtype=np.float64)
    lo = float(np.nanmin(arr)) if lo is None else lo
    hi = float(np.nanmax(arr)) if hi is None else hi
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        # A constant image has no contrast to stretch; keep it black rather than dividing by zero.
        return np.zeros(arr.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(arr, nan=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _pil_to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _HIGH_BIT_MODES:
        return Image.fromarray(_to_uint8(np.asarray(img)), mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent regions become black, the background of a radiograph.
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img.convert("RGB")


def _load_pil(source: ImageSource, label: str, max_pixels: int | None) -> Image.Image:
    with _open_binary(source) as fh:
        img = _open_pil(fh, label)
        _check_pixels(img.width, img.height, max_pixels, label)
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            # PIL says "image file is truncated" / "broken data stream" for cut-off files.
            raise ImageError(f"{label}: cannot decode {img.format or 'image'} data ({exc})") from None
        try:
            return _pil_to_rgb(img)
        except (OSError, ValueError) as exc:
            raise ImageError(f"{label}: cannot convert {img.format} mode {img.mode} to RGB ({exc})") from None


# ---------------------------------------------------------------------------------------------
# DICOM through pydicom

def _read_dicom(source: ImageSource, label: str, force: bool) -> DicomDataset:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with _open_binary(source) as fh:
            return pydicom.dcmread(fh, force=force)
    except InvalidDicomError as exc:
        raise ImageError(f"{label}: not a valid DICOM file ({exc})") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageError(f"{label}: cannot parse DICOM ({type(exc).__name__}: {exc})") from None


def _check_transfer_syntax(ds: DicomDataset, label: str) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "1.2.840.10008.1.2"))
    if not uid.is_compressed:
        return
    name = f"{uid.name} ({uid})" if uid.name != uid else str(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise ImageError(f"{label}: unsupported DICOM transfer syntax {name}: pydicom has no decoder "
                         "for it; export the image uncompressed or as PNG") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise ImageError(f"{label}: unsupported DICOM transfer syntax {name}: no decoder installed "
                         f"(needs one of: {missing})")


def _voi_range(ds: DicomDataset) -> tuple[float, float] | None:
    """Output range of the dataset's VOI transform, probed by passing the extremes through it."""
    from pydicom.pixels import apply_voi_lut

    if "WindowCenter" not in ds and "VOILUTSequence" not in ds:
        return None
    probe = apply_voi_lut(np.array([-1e12, 1e12], dtype=np.float64), ds)
    lo, hi = float(np.min(probe)), float(np.max(probe))
    return (lo, hi) if hi > lo else None


def dicom_frame_count(ds: DicomDataset) -> int:
    """Frames in a DICOM dataset (1 for a single-frame image)."""
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _dicom_to_rgb(ds: DicomDataset, label: str, max_pixels: int | None, frame: int | None = None) -> Image.Image:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageError(f"{label}: DICOM file has no pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise ImageError(f"{label}: DICOM file has no image size (Rows/Columns missing)")
    _check_pixels(cols, rows, max_pixels, label)
    _check_transfer_syntax(ds, label)
    frames = dicom_frame_count(ds)
    if frame is not None and not 0 <= frame < frames:
        raise ImageError(f"{label}: frame {frame} does not exist (the file has {frames} frame(s))")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for broken or short pixel data
        raise ImageError(f"{label}: cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from None
    if frames > 1:
        # default: the middle frame, the most representative of a volume or cine loop
        arr = arr[frames // 2 if frame is None else frame]

    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:  # colour: pydicom already converted YBR to RGB
        bits = int(ds.get("BitsStored", 8) or 8)
        rgb = arr.astype(np.uint8) if bits <= 8 else _to_uint8(arr)
        return Image.fromarray(np.ascontiguousarray(rgb[..., :3]), mode="RGB")

    arr = apply_modality_lut(arr, ds)
    voi = _voi_range(ds)
    if voi is not None:
        arr = apply_voi_lut(arr.astype(np.float64), ds)
    gray = _to_uint8(arr, *(voi or (None, None)))
    if photometric == "MONOCHROME1":  # low values are white in MONOCHROME1
        gray = 255 - gray
    return Image.fromarray(gray, mode="L").convert("RGB")


def _load_dicom(source: ImageSource, label: str, max_pixels: int | None, force: bool,
                frame: int | None = None) -> Image.Image:
    ds = _read_dicom(source, label, force)
    return _dicom_to_rgb(ds, label, max_pixels, frame)


# ---------------------------------------------------------------------------------------------
# Public API

def load_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               name: str | None = None, *, frame: int | None = None) -> Image.Image:
    """Decode ``source`` (a path or encoded bytes) to an RGB image.

    16-bit and float images are rescaled from their own min/max to 8 bit; transparency is composited
    on black; DICOM gets its modality LUT (slope/intercept), VOI LUT or window, and MONOCHROME1
    inversion. A multi-frame DICOM gives its middle frame, or frame ``frame`` (0-based) when given.
    ``max_pixels`` (``None``: no limit) guards against decompression bombs. ``name`` is used in error
    messages for in-memory bytes (e.g. "train-0.parquet row 12").
    """
    label = _describe(source, name)
    head, is_dicom = _read_head(source, label)
    if is_dicom:
        return _load_dicom(source, label, max_pixels, force=head[128:132] != b"DICM", frame=frame)
    if frame not in (None, 0):
        raise ImageError(f"{label}: frame {frame} requested, but only DICOM files have frames")
    return _load_pil(source, label, max_pixels)


def probe_image(source: ImageSource, name: str | None = None) -> ImageInfo:
    """Size and mode from the header only (no pixel decoding)."""
    label = _describe(source, name)
    head, is_dicom = _read_head(source, label)
    if is_dicom:
        import pydicom
        from pydicom.errors import InvalidDicomError

        try:
            with _open_binary(source) as fh:
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=head[128:132] != b"DICM")
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            raise ImageError(f"{label}: not a valid DICOM file ({exc})") from None
        mode = f"DICOM {ds.get('PhotometricInterpretation', '?')} {ds.get('BitsStored', '?')}-bit"
        return ImageInfo(int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), mode, "DICOM")
    with _open_binary(source) as fh:
        img = _open_pil(fh, label)
        return ImageInfo(img.width, img.height, img.mode, img.format or "?")
