"""Images and videos from URLs, under the operator's policy.

``data:`` URLs (base64 PNG, JPEG or WebP; MP4 or WebM video) are always accepted. ``http(s)`` URLs
are fetched only when remote media are enabled and the host is on the allow-list; ``file:`` URLs
only when the resolved file lies inside an allowed folder. Bytes are decoded with PIL restricted to
PNG/JPEG/WebP (no other decoders ever see untrusted input), the pixel limit is checked on the
header before any pixel is decoded, and a video must start with MP4 or Matroska magic bytes and
pass a header check with that demuxer fixed before FFmpeg decodes it (FFmpeg's probing of
arbitrary bytes could pick a playlist demuxer that follows links to local files).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from llavakit.errors import MediaError
from llavakit.processing.image import to_rgb
from llavakit.processing.video import read_video

IMAGE_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
VIDEO_TYPES = ("video/mp4", "video/webm", "video/x-matroska", "video/quicktime")


@dataclass(frozen=True)
class MediaPolicy:
    """What the operator allows a request to make the server read and decode."""

    max_image_pixels: int = 25_000_000  # width * height of one image or video frame
    max_media_bytes: int = 20 * 1024 * 1024  # one fetched or decoded image/video
    allow_remote: bool = False  # http(s) URLs at all
    allowed_domains: tuple[str, ...] = ()  # hosts http(s) URLs may name (exact, case-insensitive)
    local_dirs: tuple[Path, ...] = field(default_factory=tuple)  # folders file: URLs may point into
    fetch_timeout_s: float = 10.0


# ---- URL -> bytes ---------------------------------------------------------------------------
def parse_data_url(url: str, label: str) -> tuple[str, bytes]:
    """``data:<mime>;base64,<payload>`` -> (mime, bytes)."""
    header, sep, payload = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        raise MediaError(f"{label}: a data URL must look like data:<mime type>;base64,<data>")
    try:
        return header[: -len(";base64")].split(";")[0].strip().lower(), base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise MediaError(f"{label}: the base64 data is invalid ({err})") from None


def read_local(url: str, policy: MediaPolicy, label: str) -> bytes:
    if not policy.local_dirs:
        raise MediaError(f"{label}: file URLs are disabled on this server (start it with --allowed-local-media-path)")
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise MediaError(f"{label}: file URLs must name a local path (file:///path)")
    try:
        path = Path(unquote(parts.path)).resolve(strict=True)  # symlinks resolved before the check
    except (OSError, RuntimeError):
        raise MediaError(f"{label}: file not found or not allowed") from None
    if not any(path.is_relative_to(root) for root in policy.local_dirs) or not path.is_file():
        # Same message for "outside" and "missing": refusals must not reveal what exists.
        raise MediaError(f"{label}: file not found or not allowed")
    if path.stat().st_size > policy.max_media_bytes:
        raise MediaError(f"{label}: the file has more than {policy.max_media_bytes} bytes")
    return path.read_bytes()


async def fetch_remote(url: str, policy: MediaPolicy, label: str) -> bytes:
    """The body of an allowed http(s) URL, within ``fetch_timeout_s`` in all (not per read: a host
    that sends one byte every few seconds would never trip a per-read timeout)."""
    host = (urlsplit(url).hostname or "").lower()
    if not policy.allow_remote:
        raise MediaError(f"{label}: http(s) URLs are disabled on this server; send the image as a data: URL")
    if host not in policy.allowed_domains:
        raise MediaError(f"{label}: the host {host!r} is not on this server's allow-list")
    try:
        async with asyncio.timeout(policy.fetch_timeout_s):
            return await _download(url, policy, label)
    except TimeoutError:
        raise MediaError(f"{label}: fetching it took longer than {policy.fetch_timeout_s:g} s") from None
    except httpx.HTTPError as err:
        raise MediaError(f"{label}: cannot fetch it ({type(err).__name__})") from None


async def _download(url: str, policy: MediaPolicy, label: str) -> bytes:
    async with httpx.AsyncClient(timeout=policy.fetch_timeout_s, follow_redirects=False) as client, \
            client.stream("GET", url) as response:
        if response.status_code != 200:
            raise MediaError(f"{label}: fetching it returned HTTP {response.status_code} "
                             "(redirects are not followed)")
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > policy.max_media_bytes:
                raise MediaError(f"{label}: the download exceeds {policy.max_media_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


async def read_url(url: str, policy: MediaPolicy, label: str) -> tuple[str | None, bytes]:
    """The bytes a media URL names, with the declared MIME type for data URLs."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        mime, data = parse_data_url(url, label)
    elif scheme in ("http", "https"):
        mime, data = None, await fetch_remote(url, policy, label)
    elif scheme == "file":
        mime, data = None, read_local(url, policy, label)
    else:
        raise MediaError(f"{label}: unsupported URL scheme {scheme!r}; use a data: URL (base64)")
    if len(data) > policy.max_media_bytes:
        raise MediaError(f"{label}: {len(data)} bytes exceeds the limit of {policy.max_media_bytes}")
    return mime, data


# ---- bytes -> pixels ------------------------------------------------------------------------
def open_image(data: bytes, mime: str | None, policy: MediaPolicy, label: str) -> Image.Image:
    """PNG / JPEG / WebP bytes -> an image whose header is read and checked; no pixel is decoded yet."""
    if mime is not None and mime not in IMAGE_FORMATS:
        raise MediaError(f"{label}: type {mime!r} is not accepted; send PNG, JPEG or WebP")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            image = Image.open(io.BytesIO(data), formats=sorted(set(IMAGE_FORMATS.values())))
    except Image.DecompressionBombError:
        raise MediaError(f"{label}: its header claims far more pixels than allowed (a decompression bomb?); "
                         f"the limit is {policy.max_image_pixels} pixels per image") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise MediaError(f"{label}: not a readable PNG, JPEG or WebP image") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise MediaError(f"{label}: the image has zero size {width}x{height}")
    if width * height > policy.max_image_pixels:
        raise MediaError(f"{label}: {width}x{height} = {width * height} pixels exceeds the limit of "
                         f"{policy.max_image_pixels} pixels per image")
    return image


def load_image(image: Image.Image, label: str) -> Image.Image:
    """Decode an image from :func:`open_image` -> RGB."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise MediaError(f"{label}: truncated or corrupt image ({err})") from None
    return to_rgb(image)


def decode_image(data: bytes, mime: str | None, policy: MediaPolicy, label: str) -> Image.Image:
    """PNG / JPEG / WebP bytes -> RGB image; the pixel limit is checked before decoding."""
    return load_image(open_image(data, mime, policy, label), label)


def video_demuxer(data: bytes) -> str:
    """The FFmpeg demuxer for MP4/MOV or Matroska/WebM bytes, from their magic numbers."""
    if data[4:8] == b"ftyp":
        return "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    raise MediaError("video: only MP4 and WebM/Matroska videos are accepted")


@dataclass(frozen=True)
class VideoHeader:
    demuxer: str  # "mp4" or "matroska"
    width: int
    height: int


def read_video_header(data: bytes, mime: str | None, policy: MediaPolicy, label: str) -> VideoHeader:
    """The demuxer and frame size of MP4 / WebM bytes, checked in memory before any frame is decoded.

    The demuxer is fixed by the magic bytes: no probing (FFmpeg's probing of arbitrary bytes could
    pick a playlist demuxer that follows links to local files).
    """
    import av  # only video users pay for FFmpeg

    if mime is not None and mime not in VIDEO_TYPES:
        raise MediaError(f"{label}: type {mime!r} is not accepted; send MP4 or WebM")
    try:
        demuxer = video_demuxer(data)
    except MediaError:
        raise MediaError(f"{label}: only MP4 and WebM/Matroska videos are accepted") from None
    try:
        with av.open(io.BytesIO(data), format=demuxer) as container:
            stream = container.streams.video[0]
            width, height = stream.width, stream.height
    except (av.error.FFmpegError, IndexError, ValueError) as err:
        raise MediaError(f"{label}: cannot decode the video ({type(err).__name__})") from None
    if width * height > policy.max_image_pixels:
        raise MediaError(f"{label}: frames of {width}x{height} exceed the limit of {policy.max_image_pixels} pixels")
    return VideoHeader(demuxer, width, height)


def load_video(data: bytes, header: VideoHeader, num_frames: int, label: str) -> list[Image.Image]:
    """Frames sampled as the processor samples a video file (the core's ``read_video``, which takes paths)."""
    suffix = ".mp4" if header.demuxer == "mp4" else ".mkv"
    with tempfile.NamedTemporaryFile(suffix=suffix) as file:
        file.write(data)
        file.flush()
        try:
            return read_video(file.name, num_frames).images
        except MediaError as err:
            raise MediaError(f"{label}: {str(err).split(': ', 1)[-1]}") from None


def decode_video(data: bytes, mime: str | None, num_frames: int, policy: MediaPolicy, label: str) -> list[Image.Image]:
    """The header checked (:func:`read_video_header`), then the sampled frames decoded."""
    return load_video(data, read_video_header(data, mime, policy, label), num_frames, label)
