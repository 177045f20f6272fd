"""What a request may send, and turning it into a PIL image.

A request never names a file on the server: an image arrives as bytes (a page upload or a ``data:``
URI). A remote ``http(s)`` URL is fetched only when the server was started with
``--allow-remote-images``, under the same byte limit. Every refusal is an :class:`UploadError` whose
message can be shown to a person as it is, and whose ``code`` goes into the API's error object.
:func:`host_warning` says what binding anything but loopback exposes.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medblip.errors import ImageError

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_MAX_BYTES = 20 * 2**20
DEFAULT_MAX_PIXELS = 36_000_000  # 6000 x 6000: larger than any radiograph, far below a decompression bomb


class UploadError(ImageError):
    """An image a request sent that the server will not caption; ``code`` is machine-readable."""

    def __init__(self, message: str, code: str = "invalid_image") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class UploadLimits:
    """The server's limits on one image (bytes as sent, decoded pixels) and on remote URLs."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_remote: bool = False
    remote_timeout: float = 10.0

    def check_size(self, n_bytes: int, name: str) -> None:
        if n_bytes > self.max_bytes:
            raise UploadError(f"{name}: {_mb(n_bytes)} exceeds this server's limit of {_mb(self.max_bytes)} per "
                              f"image (--max-upload-mb)", code="image_too_large")


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def decode_image(data: bytes, limits: UploadLimits, name: str = "image") -> Image.Image:
    """PNG / JPEG / DICOM / ... bytes -> RGB image, within ``limits``; anything else -> UploadError."""
    from medblip.data.images import load_image, probe_image

    limits.check_size(len(data), name)
    try:
        info = probe_image(data, name=name)  # the header only: refuse a huge image before decoding it
        if info.width * info.height > limits.max_pixels:
            raise UploadError(f"{name}: {info.width}x{info.height} = {info.width * info.height:,} pixels exceeds "
                              f"this server's limit of {limits.max_pixels:,} (--max-pixels)", code="image_too_large")
        return load_image(data, max_pixels=limits.max_pixels, name=name)
    except UploadError:
        raise
    except ImageError as exc:
        raise UploadError(str(exc)) from None


def image_bytes_from_url(url: str, limits: UploadLimits) -> bytes:
    """The bytes an OpenAI ``image_url`` stands for: a base64 ``data:`` URI, or (only when allowed) an
    ``http(s)`` URL fetched with the byte limit. ``file:``, paths and other schemes are refused."""
    if not isinstance(url, str) or not url:
        raise UploadError("image_url.url must be a non-empty string", code="invalid_image_url")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _data_uri_bytes(url, limits)
    if scheme in ("http", "https"):
        if not limits.allow_remote:
            raise UploadError("remote image URLs are refused by this server: send the image as a "
                              "data:image/...;base64 URI (or start the server with --allow-remote-images)",
                              code="remote_image_refused")
        return _fetch(url, limits)
    raise UploadError(f"unsupported image_url {url[:40]!r}: send the image as a data:image/...;base64 URI "
                      "(the server never reads files named by a request)", code="invalid_image_url")


def _data_uri_bytes(url: str, limits: UploadLimits) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise UploadError("malformed data URI: no ',' before the data", code="invalid_image_url")
    if not header.lower().endswith(";base64"):
        raise UploadError("data URI must be base64-encoded (data:image/png;base64,...)", code="invalid_image_url")
    limits.check_size(len(payload) * 3 // 4, "data URI image")  # before decoding it
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError("data URI: invalid base64 data", code="invalid_image_url") from None


def _fetch(url: str, limits: UploadLimits) -> bytes:
    import httpx

    chunks: list[bytes] = []
    total = 0
    try:
        with httpx.stream("GET", url, timeout=limits.remote_timeout, follow_redirects=True) as resp:
            if resp.status_code != 200:
                raise UploadError(f"{url}: HTTP {resp.status_code} when fetching the image", code="image_fetch_failed")
            for chunk in resp.iter_bytes():
                total += len(chunk)
                limits.check_size(total, url)
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise UploadError(f"{url}: cannot fetch the image ({type(exc).__name__}: {exc})",
                          code="image_fetch_failed") from None
    return b"".join(chunks)


# -- who can connect ---------------------------------------------------------------------------
LOOPBACK_NAMES = ("localhost", "localhost.localdomain")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_warning(host: str, api_key: str | None) -> str | None:
    """What to tell the person starting a server that other machines can reach (None on loopback)."""
    if is_loopback(host):
        return None
    if api_key is None:
        return (f"serving on {host}: every machine that can reach this one can use the page and the API, with "
                "no key. Images are medical data: bind 127.0.0.1 and tunnel (ssh -L), or set --api-key / "
                "MEDBLIP_API_KEY and put TLS in front")
    return (f"serving on {host}: reachable from other machines; requests need the API key, but the traffic is "
            "plain HTTP: put TLS in front (a reverse proxy) or tunnel (ssh -L) before sending patient images")
