"""Decode any radiology image (JPEG/PNG/TIFF in any mode, DICOM) to an 8-bit RGB PIL image.

Every failure becomes an :class:`~medblip.errors.ImageError` whose message names the file and the
reason, so a loader or the CLI can report it in one line.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medblip.errors import ImageError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset as DicomDataset

DEFAULT_MAX_PIXELS = 64_000_000
#: environment variable with the process-wide pixel limit (0: none); ``--max-pixels`` sets it
MAX_PIXELS_ENV = "MEDBLIP_MAX_PIXELS"
MaxPixels = int | None | Literal["default"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".dcm", ".dicom")
_DICOM_SUFFIXES = (".dcm", ".dicom")
_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

ImageSource = Path | str | bytes
# Explicit-VR tags of group 0x0008 (or file meta 0x0002), little endian, where a DICOM file without
# its 128-byte preamble starts; no raster format starts with these bytes.
_BARE_DICOM_STARTS = (b"\x08\x00", b"\x02\x00")


def max_pixels_limit() -> int | None:
    """The pixel limit used when a caller names none: ``$MEDBLIP_MAX_PIXELS`` (0: no limit), else 64 M."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        from medblip.errors import ConfigError

        raise ConfigError(f"{MAX_PIXELS_ENV}={raw!r} is not a whole number of pixels (0: no limit)") from None
    return value if value > 0 else None


def set_max_pixels(limit: int | None) -> None:
    """Set the process-wide pixel limit (``None``: no limit) for every later :func:`load_image`.

    Kept in the environment, so DataLoader workers and subprocesses inherit it; PIL's own guard is
    raised to match, so the limit set here is the one that applies.
    """
    os.environ[MAX_PIXELS_ENV] = str(limit or 0)
    pil_limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        Image.MAX_IMAGE_PIXELS = None
    elif pil_limit is not None and limit > pil_limit:
        Image.MAX_IMAGE_PIXELS = limit


def _limit(max_pixels: MaxPixels) -> int | None:
    return max_pixels_limit() if max_pixels == "default" else max_pixels  # type: ignore[return-value]


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
        return head, head[128:132] == b"DICM" or head[:2] in _BARE_DICOM_STARTS
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
    # Some DICOM writers omit the 128-byte preamble (and even the file meta); trust the extension then,
    # or the first bytes.
    return head, (head[128:132] == b"DICM" or path.suffix.lower() in _DICOM_SUFFIXES
                  or head[:2] in _BARE_DICOM_STARTS)


def _open_binary(source: ImageSource) -> IO[bytes]:
    return io.BytesIO(source) if isinstance(source, bytes) else Path(source).open("rb")


_RAISE_LIMIT = f"if the image is genuine, raise the limit with --max-pixels N (or {MAX_PIXELS_ENV}=N)"


def _check_pixels(width: int, height: int, max_pixels: int | None, label: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"{label}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                         f"{max_pixels:,} (possible decompression bomb); {_RAISE_LIMIT}")


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
            raise ImageError(f"{label}: too many pixels ({exc}); possible decompression bomb; "
                             f"{_RAISE_LIMIT}") from None
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
        if _exif_orientation(img) not in (None, 1):
            # A camera or phone photo of a film stores its rotation in EXIF; the pixels are as shot.
            img = ImageOps.exif_transpose(img) or img
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
            ds = pydicom.dcmread(fh, force=force)
    except InvalidDicomError as exc:
        raise ImageError(f"{label}: not a valid DICOM file ({exc})") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageError(f"{label}: cannot parse DICOM ({type(exc).__name__}: {exc})") from None
    _infer_transfer_syntax(ds)
    return ds


def _infer_transfer_syntax(ds: DicomDataset) -> None:
    """A file without file meta has no Transfer Syntax UID, which pixel decoding needs: take the
    encoding pydicom detected while reading (implicit little endian for such files, usually)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit is None or little is None:
        implicit, little = True, True
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit
                              else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


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


def _int_value(ds: DicomDataset, keyword: str, default: int, label: str) -> int:
    raw = ds.get(keyword, default)
    try:
        return int(raw or default)
    except (TypeError, ValueError):
        raise ImageError(f"{label}: invalid DICOM value {keyword}={str(raw)!r} (not a whole number); "
                         "fix the file's header or re-export it") from None


def _palette_to_rgb(arr: np.ndarray, ds: DicomDataset) -> np.ndarray:
    """PALETTE COLOR: look the indices up in the red/green/blue LUTs, scaled to 8 bit by entry size."""
    from pydicom.pixels import apply_color_lut

    rgb = apply_color_lut(arr, ds)
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor") or [0, 0, 8]
    entry_bits = int(descriptor[2]) if len(descriptor) > 2 else 8
    # 16-bit entries span 0..65535; a few writers declare 16 bits but store 8-bit values.
    if entry_bits > 8 and int(rgb.max(initial=0)) > 255:
        return _to_uint8(rgb, 0, 2 ** entry_bits - 1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _dicom_to_rgb(ds: DicomDataset, label: str, max_pixels: int | None, frame: int | None = None) -> Image.Image:
    try:
        return _convert_dicom(ds, label, max_pixels, frame)
    except ImageError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        # An invalid header value (e.g. WindowCenter "1A") surfaces inside pydicom's LUT code.
        raise ImageError(f"{label}: cannot convert DICOM pixel data ({type(exc).__name__}: {exc}); "
                         "fix the file's header or re-export it") from None


def _convert_dicom(ds: DicomDataset, label: str, max_pixels: int | None, frame: int | None = None) -> Image.Image:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageError(f"{label}: DICOM file has no pixel data")
    rows, cols = _int_value(ds, "Rows", 0, label), _int_value(ds, "Columns", 0, label)
    if rows <= 0 or cols <= 0:
        raise ImageError(f"{label}: DICOM file has no image size (Rows/Columns missing)")
    _check_pixels(cols, rows, max_pixels, label)
    _check_transfer_syntax(ds, label)
    frames = max(1, _int_value(ds, "NumberOfFrames", 1, label))
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
        return Image.fromarray(np.ascontiguousarray(_palette_to_rgb(arr, ds)[..., :3]), mode="RGB")
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

def load_image(source: ImageSource, max_pixels: MaxPixels = "default",
               name: str | None = None, *, frame: int | None = None) -> Image.Image:
    """Decode ``source`` (a path or encoded bytes) to an RGB image.

    16-bit and float images are rescaled from their own min/max to 8 bit; transparency is composited
    on black; an EXIF orientation is applied; DICOM gets its modality LUT (slope/intercept), VOI LUT
    or window, MONOCHROME1 inversion, or its colour palette, and is read without preamble or file
    meta too. ``max_pixels`` (``None``: no limit; default: :func:`max_pixels_limit`) guards against
    decompression bombs. ``name`` is used in error messages for in-memory bytes (e.g.
    "train-0.parquet row 12"). A multi-frame DICOM gives its middle frame, or frame ``frame``
    (0-based) when given.
    """
    label = _describe(source, name)
    head, is_dicom = _read_head(source, label)
    limit = _limit(max_pixels)
    if is_dicom:
        return _load_dicom(source, label, limit, force=head[128:132] != b"DICM", frame=frame)
    if frame not in (None, 0):
        raise ImageError(f"{label}: frame {frame} requested, but only DICOM files have frames")
    return _load_pil(source, label, limit)


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
        return ImageInfo(_int_value(ds, "Columns", 0, label), _int_value(ds, "Rows", 0, label), mode, "DICOM")
    with _open_binary(source) as fh:
        img = _open_pil(fh, label)
        width, height = img.width, img.height
        if _exif_orientation(img) in (5, 6, 7, 8):  # rotated by 90 degrees when loaded
            width, height = height, width
        return ImageInfo(width, height, img.mode, img.format or "?")


def _exif_orientation(img: Any) -> int | None:
    try:
        value = img.getexif().get(0x0112)  # the Orientation tag
    except Exception:  # noqa: BLE001 - a broken EXIF block only means no rotation
        return None
    return value if isinstance(value, int) else None
