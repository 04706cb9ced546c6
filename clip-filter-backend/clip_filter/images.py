"""Untrusted bytes -> an 8-bit RGB PIL image, with limits checked before pixels are decoded (base64 input:
image_base64.py).

What is accepted: JPEG, PNG (and APNG), GIF, WebP, BMP, TIFF, HEIC/HEIF (when pillow-heif imports) and
AVIF (when Pillow or pillow-heif reads it). Animated images give their first frame. Everything else is
refused with an `ImageDecodeError` whose `code` says why (see `ERROR_STATUS`).

The format is judged from the leading bytes, and Pillow is only allowed to use the plugin for that
format, so a file can never reach one of Pillow's rarer (riskier) decoders such as EPS or PSD.

Thread-safe: nothing here changes global state after import. Two Pillow settings are process-wide and
left as they are: `ImageFile.LOAD_TRUNCATED_IMAGES` must keep its default (False) for truncated files to
be refused, and Pillow's own bomb check (`Image.MAX_IMAGE_PIXELS`) also stays active, reported as
`decompression_bomb`, so the effective pixel limit is min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS).
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, features

from clip_filter.core.errors import ClipFilterError

# Load every Pillow plugin now, once: Image.open would otherwise do it lazily on a worker thread.
Image.init()

try:  # HEIC/HEIF is optional: without pillow-heif those files are refused as unsupported.
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except Exception:  # noqa: BLE001 - any import/registration failure just disables HEIF
    HEIF_SUPPORTED = False

AVIF_SUPPORTED = bool(features.check("avif"))
if not AVIF_SUPPORTED and HEIF_SUPPORTED:
    # Older pillow-heif versions decode AVIF; newer ones (1.x) dropped it and lack this function.
    try:
        pillow_heif.register_avif_opener()  # type: ignore[attr-defined]
        AVIF_SUPPORTED = True
    except Exception:  # noqa: BLE001
        pass

ERROR_STATUS: dict[str, int] = {
    "empty_image": 400,
    "invalid_base64": 400,
    "image_too_large": 413,
    "image_too_many_pixels": 413,
    "decompression_bomb": 413,
    "not_an_image": 415,
    "unsupported_image_format": 415,
    "truncated_image": 422,
    "corrupt_image": 422,
}

# MIME type -> (human name, the Pillow plugins allowed to open it).
_SUPPORTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "image/jpeg": ("JPEG", ("JPEG",)),
    "image/png": ("PNG", ("PNG",)),
    "image/gif": ("GIF", ("GIF",)),
    "image/webp": ("WebP", ("WEBP",)),
    "image/bmp": ("BMP", ("BMP",)),
    "image/tiff": ("TIFF", ("TIFF",)),
    "image/heic": ("HEIC", ("HEIF",)),
    "image/heif": ("HEIF", ("HEIF",)),
    "image/avif": ("AVIF", ("AVIF", "HEIF")),
}
# Formats Pillow may report for the plugins above (a multi-picture JPEG opens as MPO).
_ALLOWED_PIL_FORMATS = {"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "HEIF", "AVIF"}

# A file over the pixel limit that declares more than this many pixels per byte of data is a
# decompression bomb: deflate tops out near 1032:1, and real photos are nowhere close.
_BOMB_PIXELS_PER_BYTE = 1000

_HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"mif1", b"msf1", b"mif2", b"miaf"}

# Pillow's exceptions for bad input. Warnings are only raised when the process turns them into errors.
_DECODE_ERRORS = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    ValueError,
    SyntaxError,
    struct.error,
    EOFError,
    LookupError,  # IndexError, KeyError
    TypeError,
    ArithmeticError,  # ZeroDivisionError, OverflowError
    RuntimeError,  # pillow-heif / libheif
    Image.DecompressionBombError,
    Warning,  # includes Image.DecompressionBombWarning
)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError("ImageLimits.max_bytes and max_pixels must be positive")


@dataclass(frozen=True)
class DecodeTarget:
    """The smallest image the caller needs: decoding may go down to (at least) `min_width` x `min_height`.

    JPEG is then decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (`jpeg_draft`), other formats
    are box-reduced by an integer factor right after decoding (`reduce`), before any copy or mode
    conversion; both keep every side at or above the minimum, so an exact resize follows.
    """

    min_width: int
    min_height: int
    jpeg_draft: bool = True
    reduce: bool = True

    def reduce_factor(self, size: tuple[int, int]) -> int:
        if not self.reduce:
            return 1
        return max(1, min(size[0] // max(self.min_width, 1), size[1] // max(self.min_height, 1)))


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before any pixel is decoded: `decoded_size` is what decoding will allocate."""

    mimetype: str
    size: tuple[int, int]
    decoded_size: tuple[int, int]
    orientation: int = 1  # the EXIF turn decoding applies to `size` (1: none)

    @property
    def decoded_pixels(self) -> int:
        return self.decoded_size[0] * self.decoded_size[1]

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) of the full-size image turned upright, as a full decode_image returns it."""
        return (self.size[1], self.size[0]) if self.orientation in (5, 6, 7, 8) else self.size


class ImageDecodeError(ClipFilterError):
    """Why some bytes are not an acceptable image; the HTTP status follows from the code."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(code, message, ERROR_STATUS[code], **details)


def accepted_formats() -> list[str]:
    names = ["JPEG", "PNG", "GIF", "WebP", "BMP", "TIFF"]
    if HEIF_SUPPORTED:
        names.append("HEIC/HEIF")
    if AVIF_SUPPORTED:
        names.append("AVIF")
    return names


def _accepted_sentence() -> str:
    return "accepted formats are " + ", ".join(accepted_formats()) + "."


# --- sniffing ---------------------------------------------------------------------------------------


_FTYP_SCAN_BYTES = 256


def _iso_bmff_mimetype(data: bytes) -> str | None:
    """HEIC/HEIF/AVIF share the ISO-BMFF container; the `ftyp` brands say which one it is."""
    if data[4:8] != b"ftyp":
        return None
    box_size = int.from_bytes(data[0:4], "big")
    major = data[8:12]
    # The brand list is short (real files: < 64 bytes); a declared size of 4 GiB must not walk a 99 MB upload (L3).
    end = min(len(data), box_size, _FTYP_SCAN_BYTES) if box_size >= 16 else 16
    brands = {major} | {data[i : i + 4] for i in range(16, end - 3, 4)}
    if major in _AVIF_BRANDS or (major in _HEIF_BRANDS and brands & _AVIF_BRANDS):
        return "image/avif"
    if major in _HEIC_BRANDS or (major in _HEIF_BRANDS and brands & _HEIC_BRANDS):
        return "image/heic"
    if major in _HEIF_BRANDS:
        return "image/heif"
    return None  # e.g. an MP4 or QuickTime video


def sniff_image_mimetype(data: bytes) -> str | None:
    """The MIME type of a supported image format judged by its leading bytes, or None.

    APNG reports "image/png" (browsers show it animated either way).
    """
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"BM"):
        return "image/bmp"
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):  # TIFF and BigTIFF
        return "image/tiff"
    return _iso_bmff_mimetype(data)


# Recognised image formats that are refused on purpose (rare, risky decoders or vector formats).
_UNSUPPORTED_SIGNATURES: list[tuple[bytes, str]] = [
    (b"8BPS", "Photoshop (PSD)"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"v/1\x01", "OpenEXR"),
    (b"#?RADIANCE", "Radiance HDR"),
    (b"gimp xcf", "GIMP XCF"),
    (b"\x01\xda", "SGI"),
]
_NETPBM = re.compile(rb"^P[1-7]\s")

# Well-known documents and archives, named in the error so the user sees what they sent.
_NON_IMAGE_SIGNATURES: list[tuple[bytes, str]] = [
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x7fELF", "an executable"),
    (b"ID3", "an MP3 audio file"),
    (b"OggS", "an Ogg media file"),
]


def _looks_like_svg(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith(b"<svg") or (text.startswith((b"<?xml", b"<!")) and b"<svg" in text)


def _unsupported_format_name(data: bytes) -> str | None:
    """The name of a known image format that is refused on purpose, or None."""
    head = data[:4096]
    name = next((name for sig, name in _UNSUPPORTED_SIGNATURES if head.startswith(sig)), None)
    if name:
        return name
    if data.endswith(b"TRUEVISION-XFILE.\x00"):  # TGA has no leading magic, only this footer
        return "TGA"
    if head[:4] == b"\x00\x00\x01\x00" and head[4:6] != b"\x00\x00":  # ICO: reserved, type 1, count
        return "ICO"
    if _NETPBM.match(head):
        return "PNM/PPM"
    if _looks_like_svg(head):
        return "SVG"
    return None


def _refuse_unrecognised(data: bytes) -> ImageDecodeError:
    """The error for data whose leading bytes match no supported format."""
    head = data[:4096]
    unsupported = _unsupported_format_name(data)
    if unsupported is not None:
        return ImageDecodeError(
            "unsupported_image_format",
            f"{unsupported} images are not supported; {_accepted_sentence()}",
            format=unsupported,
        )
    what = next((name for sig, name in _NON_IMAGE_SIGNATURES if head.startswith(sig)), None)
    if what is None and head[4:8] == b"ftyp":
        what = "a video or other ISO media file"
    if what is None and _looks_like_text(head):
        what = "text"
    sent = f"The data is {what}, not an image" if what else "The data is not a recognised image"
    return ImageDecodeError("not_an_image", f"{sent}; {_accepted_sentence()}")


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t\f" for ch in text)


# --- truncation --------------------------------------------------------------------------------------

_TRUNCATION_HINTS = ("truncat", "end of file", "unexpected end", "not enough data", "premature end")


def _looks_truncated(data: bytes, mimetype: str, exc: BaseException) -> bool:
    """After a decode failure: does the data end before its own structure says it should?"""
    if any(hint in str(exc).lower() for hint in _TRUNCATION_HINTS) or isinstance(exc, EOFError):
        return True
    if mimetype == "image/jpeg":
        return not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")  # no End Of Image marker
    if mimetype == "image/png":
        return b"IEND" not in data[-64:]
    if mimetype == "image/gif":
        return not data.rstrip(b"\x00").endswith(b";")  # no GIF trailer
    if mimetype == "image/webp":
        return len(data) < 8 or int.from_bytes(data[4:8], "little") + 8 > len(data)  # RIFF size
    if mimetype == "image/bmp":
        declared = int.from_bytes(data[2:6], "little") if len(data) >= 6 else 0
        return len(data) < 14 or declared > len(data)  # some writers leave the size 0: unknown
    if mimetype in ("image/heic", "image/heif", "image/avif"):
        return _iso_bmff_truncated(data)
    if mimetype == "image/tiff":
        return _tiff_ifd_truncated(data)
    return False


def _tiff_ifd_truncated(data: bytes) -> bool:
    """TIFF has no end marker; a first directory (IFD) that runs past the end is the best clue."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return False  # BigTIFF: rely on Pillow's message
    order: Literal["little", "big"] = "little" if data[:2] == b"II" else "big"
    if len(data) < 8:
        return True
    ifd = int.from_bytes(data[4:8], order)
    if len(data) < ifd + 2:
        return True
    entries = int.from_bytes(data[ifd : ifd + 2], order)
    return len(data) < ifd + 2 + 12 * entries + 4


def _iso_bmff_truncated(data: bytes) -> bool:
    offset = 0
    while offset < len(data):
        if len(data) - offset < 8:
            return True
        size = int.from_bytes(data[offset : offset + 4], "big")
        if size == 1:  # 64-bit size follows the type
            if len(data) - offset < 16:
                return True
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        elif size == 0:  # box runs to the end of the file
            return False
        if size < 8:
            return False  # malformed, not short: corrupt
        offset += size
    return offset > len(data)


# --- decoding ----------------------------------------------------------------------------------------


def _checked_format(data: bytes, limits: ImageLimits) -> tuple[str, str, tuple[str, ...]]:
    """(mimetype, name, plugins) of acceptable data; the byte limit and the sniffing, nothing decoded."""
    if not data:
        raise ImageDecodeError("empty_image", f"The image is empty (0 bytes); {_accepted_sentence()}")
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(
            "image_too_large",
            f"The image is {len(data):,} bytes, over the limit of {limits.max_bytes:,} bytes; send a smaller file.",
            limit=limits.max_bytes,
            actual=len(data),
        )
    mimetype = sniff_image_mimetype(data)
    if mimetype is None:
        raise _refuse_unrecognised(data)
    name, plugins = _SUPPORTED[mimetype]
    if (mimetype == "image/avif" and not AVIF_SUPPORTED) or (
        mimetype in ("image/heic", "image/heif") and not HEIF_SUPPORTED
    ):
        raise ImageDecodeError(
            "unsupported_image_format",
            f"{name} images are not supported on this server; {_accepted_sentence()}",
            format=name,
        )
    return mimetype, name, plugins


def _open(data: bytes, plugins: tuple[str, ...], limits: ImageLimits) -> Image.Image:
    """Image.open restricted to the sniffed format's plugins; reads the header only."""
    opened = Image.open(io.BytesIO(data), formats=list(plugins))
    if opened.format not in _ALLOWED_PIL_FORMATS:  # belt and braces: the plugin list decides
        opened.close()
        raise ImageDecodeError(
            "unsupported_image_format",
            f"{opened.format} images are not supported; {_accepted_sentence()}",
            format=opened.format,
        )
    try:
        _check_pixels(opened.size, len(data), limits)  # header only: no pixel data decoded yet
    except ImageDecodeError:
        opened.close()
        raise
    return opened


def _draft(opened: Image.Image, target: DecodeTarget | None) -> None:
    """Ask libjpeg for the smallest DCT scale (1/2, 1/4, 1/8) that keeps the target; no-op for other formats."""
    if target is not None and target.jpeg_draft and opened.format in ("JPEG", "MPO"):
        opened.draft(opened.mode, (target.min_width, target.min_height))


def probe_image(data: bytes, limits: ImageLimits, target: DecodeTarget | None = None) -> ImageHeader:
    """Check `data` as decode_image would, from its header alone, and say how large its decode will be.

    Raises the same ImageDecodeError as decode_image for everything the header can tell (format, byte
    and pixel limits); corrupt pixel data is only found by decoding.
    """
    mimetype, name, plugins = _checked_format(data, limits)
    try:
        with _open(data, plugins, limits) as opened:
            size = opened.size
            orientation = _header_orientation(opened)
            _draft(opened, target)
            return ImageHeader(mimetype, size, opened.size, orientation)
    except ImageDecodeError:
        raise
    except _DECODE_ERRORS as exc:
        raise _decode_failure(exc, data, mimetype, name, limits) from exc


def decode_image(data: bytes, limits: ImageLimits, target: DecodeTarget | None = None) -> Image.Image:
    """Decode untrusted bytes into a new 8-bit RGB image (EXIF orientation applied, first frame).

    With a `target`, large images come out smaller (JPEG DCT scaling, integer box reduction), never
    below the target; without one, at full size. Raises ImageDecodeError for anything that is not an
    acceptable image within `limits`.
    """
    return decode_image_sized(data, limits, target)[0]


def decode_image_sized(
    data: bytes, limits: ImageLimits, target: DecodeTarget | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """decode_image, and the (width, height) of the *full-size* upright image: what a reduced decode no longer
    shows, and what a collection records for the item."""
    if not isinstance(data, bytes):
        data = bytes(data)
    mimetype, name, plugins = _checked_format(data, limits)
    try:
        with _open(data, plugins, limits) as opened:
            full_size = opened.size  # before the draft, which shrinks it
            _draft(opened, target)
            opened.load()  # frame 0 only; with LOAD_TRUNCATED_IMAGES False short data is an error
            factor = target.reduce_factor(opened.size) if target is not None else 1
            if factor > 1:
                orientation = _orientation(opened)
                image = _transpose(_to_rgb(_reduce(opened, factor)), orientation)
                upright = (full_size[1], full_size[0]) if orientation in (5, 6, 7, 8) else full_size
            elif opened.size != full_size:  # drafted (JPEG DCT scaling) only
                orientation = _orientation(opened)
                image = _to_rgb(_apply_orientation(opened))
                upright = (full_size[1], full_size[0]) if orientation in (5, 6, 7, 8) else full_size
            else:  # full size: what the decode shows
                image = _to_rgb(_apply_orientation(opened))
                upright = image.size
        return image, upright
    except ImageDecodeError:
        raise
    except _DECODE_ERRORS as exc:
        raise _decode_failure(exc, data, mimetype, name, limits) from exc


def _header_orientation(opened: Image.Image) -> int:
    """The EXIF turn a decode will still apply, from what the header holds (JPEG, WebP, HEIF read it when
    opened). 1 for TIFF, whose size Pillow already reports upright (it turns the pixels itself on load), and
    for a PNG whose eXIf chunk, if any, follows the pixels: Pillow would decode the whole image to find it."""
    if opened.format == "TIFF" or (opened.format == "PNG" and "exif" not in opened.info):
        return 1
    return _orientation(opened)


def _check_pixels(size: tuple[int, int], n_bytes: int, limits: ImageLimits) -> None:
    width, height = size
    pixels = width * height
    if pixels <= limits.max_pixels:
        return
    details = {"width": width, "height": height, "limit": limits.max_pixels, "actual": pixels}
    if pixels > _BOMB_PIXELS_PER_BYTE * n_bytes:
        raise ImageDecodeError(
            "decompression_bomb",
            f"The image declares {width}x{height} pixels in only {n_bytes:,} bytes, which looks like a "
            f"decompression bomb; images up to {limits.max_pixels:,} pixels are accepted.",
            **details,
        )
    raise ImageDecodeError(
        "image_too_many_pixels",
        f"The image is {width}x{height} ({pixels:,} pixels), over the limit of {limits.max_pixels:,} "
        "pixels; resize it and try again.",
        **details,
    )


def _decode_failure(exc: BaseException, data: bytes, mimetype: str, name: str, limits: ImageLimits) -> ImageDecodeError:
    message = str(exc)
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)) or (
        "Decompressed data too large" in message or "Too much memory used in text chunks" in message
    ):
        return ImageDecodeError(
            "decompression_bomb",
            f"The {name} image would expand to far more data than it holds, which looks like a "
            f"decompression bomb; images up to {limits.max_pixels:,} pixels are accepted.",
            format=name,
            limit=limits.max_pixels,
        )
    if _looks_truncated(data, mimetype, exc):
        return ImageDecodeError(
            "truncated_image",
            f"The {name} image is truncated: the data ends before the image does; send the complete file.",
            format=name,
        )
    return ImageDecodeError(
        "corrupt_image",
        f"The data starts like a {name} image but is corrupt and cannot be decoded; send a valid "
        f"image file ({', '.join(accepted_formats())}).",
        format=name,
    )


def _apply_orientation(image: Image.Image) -> Image.Image:
    """A copy of `image` turned upright per its EXIF orientation."""
    try:
        return ImageOps.exif_transpose(image)
    except _DECODE_ERRORS:
        # Broken EXIF in otherwise good pixels: keep the pixels as stored rather than refuse them.
        return image.copy()


_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 when absent or unreadable), read before the image is reduced: a reduced
    copy no longer carries a TIFF's tags."""
    try:
        return int(image.getexif().get(0x0112, 1) or 1)
    except _DECODE_ERRORS:
        return 1


def _transpose(image: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    return image.transpose(method) if method is not None else image


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    """A `factor` times smaller copy, made before the full-size image is converted or copied.

    Modes Image.reduce lacks, and colour-keyed transparency (which averaging would break), go to RGB first.
    """
    mode = image.mode
    if mode == "1":
        image = image.convert("L")
    elif mode.startswith("I;16"):
        image = Image.fromarray(_high_depth_to_uint8(image, mode), "L")
    elif mode == "P" or "transparency" in image.info or mode in _PREMULTIPLIED:
        image = _to_rgb(image)
    try:
        return image.reduce(factor)
    except ValueError:  # "image has wrong mode": anything else reduces as RGB
        return _to_rgb(image).reduce(factor)


_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited onto white."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I" or mode == "F":
        return Image.fromarray(_high_depth_to_uint8(image, mode), "L").convert("RGB")
    if mode in _PREMULTIPLIED:
        image = image.convert(_PREMULTIPLIED[mode])
        mode = image.mode
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode in ("P", "L", "RGB", "1") and "transparency" in image.info)
    if not has_alpha:
        return image if mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _high_depth_to_uint8(image: Image.Image, mode: str) -> np.ndarray:
    """16-bit, 32-bit integer and float greyscale -> 0..255, scaled (never wrapped or clipped).

    One float64 working copy, changed in place (a 50-megapixel float TIFF would otherwise make five).
    """
    if mode.startswith("I;16"):
        return ((np.asarray(image).astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    values = np.array(image, dtype=np.float64)
    np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "I" and low >= 0 and high <= 65535:
        scale = 65535.0  # Pillow's usual container for 16-bit data
    elif mode == "F" and low >= 0 and high <= 1:
        scale = 1.0  # the usual range of float images
    else:  # unknown range: stretch what is there
        values -= low
        scale = (high - low) or 1.0
    values *= 255.0 / scale
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


# --- thumbnails --------------------------------------------------------------------------------------


def make_thumbnail(image: Image.Image, size: int, quality: int = 85) -> bytes:
    """JPEG bytes of `image` scaled so its longest side is at most `size` (aspect ratio kept, never enlarged)."""
    if size < 1:
        raise ValueError("thumbnail size must be at least 1")
    thumb = _to_rgb(image)
    thumb = thumb.copy() if thumb is image else thumb  # never modify the caller's image
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
