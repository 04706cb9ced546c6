"""Odd and hostile image files, made in code (no binary fixtures in the repository)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

RED = (220, 20, 20)
GREEN = (20, 200, 40)
BLUE = (20, 40, 220)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def two_colour(size: tuple[int, int] = (64, 48), left=RED, right=BLUE) -> Image.Image:
    """Left half one colour, right half another: survives lossy codecs and shows mirroring."""
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


def corner_marked(size: tuple[int, int] = (64, 32)) -> Image.Image:
    """Blue, with a red block in the top-left corner: shows where a rotation moved it."""
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, size[0] // 4, size[1] // 4))
    return image


def noise(size: tuple[int, int] = (48, 40), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Smooth gradients + texture + noise: what reduced-scale decoding meets in photos."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 200, 3)[None, None] + 60 * np.sin(xx / w * 3 + rng.uniform(0, 6))[..., None]
    texture = 20 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 5.0)[..., None]
    pixels = base + texture + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def with_orientation(orientation: int, fmt: str = "JPEG") -> bytes:
    """`corner_marked()` stored as is, with an EXIF Orientation tag asking viewers to turn it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    return encode(corner_marked(), fmt, exif=exif, **options)


def animated(fmt: str, colours=(RED, GREEN, BLUE), size=(32, 24)) -> bytes:
    frames = [Image.new("RGB", size, colour) for colour in colours]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A valid PNG signature and IHDR claiming width x height (8-bit grey), with a tiny IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_with_ztxt_bomb() -> bytes:
    """A small valid PNG whose zTXt chunk inflates to 100 MB of text."""
    valid = encode(Image.new("RGB", (8, 8), RED), "PNG")
    ihdr_end = 8 + 25  # signature + IHDR chunk
    compressor = zlib.compressobj(9)
    text = compressor.compress(b"\x00" * (100 * 1024 * 1024)) + compressor.flush()
    ztxt = png_chunk(b"zTXt", b"Comment\x00\x00" + text)
    return valid[:ihdr_end] + ztxt + valid[ihdr_end:]
