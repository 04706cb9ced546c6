"""Property-based fuzzing of `clip_filter.images.decode_image`, in process (bounded, derandomised: see conftest).

The property, for any bytes: `decode_image` returns an 8-bit RGB image within the limits (bytes and pixels), or
raises a `ClipFilterError` whose status is a 4xx. Any other exception (a Pillow internal error, a MemoryError, a
NumPy error) or a 5xx status fails. The inputs: random bytes, and valid files of every accepted format (several
modes, animated, EXIF-rotated, 16-bit and float) truncated, bit-flipped, spliced, or with their width and height
fields rewritten, so both the header checks and the decoders see hostile data. tests/unit/test_images.py has the
exact decoding tests; this file only asks "refused cleanly or decoded within limits".
"""

from __future__ import annotations

import base64
import io
import struct
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from unit.image_factory import animated, encode, noise, png_header_only, with_orientation

from clip_filter.core.errors import ClipFilterError
from clip_filter.image_base64 import decode_base64_image
from clip_filter.images import ImageLimits, decode_image

from .conftest import FUZZ_SETTINGS

# Small limits, so that rewritten dimensions cross them often: both refusals and decodes get exercised.
LIMITS = ImageLimits(max_bytes=64 * 1024, max_pixels=64 * 64)


def _seeds() -> dict[str, bytes]:
    rgb = noise((24, 16), seed=7)
    grey16 = Image.fromarray((np.arange(16 * 12, dtype=np.uint16).reshape(12, 16) * 300).astype(np.uint16))
    float_image = Image.fromarray(np.linspace(-2.0, 3.0, 16 * 12, dtype=np.float32).reshape(12, 16), "F")
    rgba = rgb.convert("RGBA")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    cmyk = rgb.convert("CMYK")
    return {
        "png-rgb": encode(rgb, "PNG"),
        "png-rgba": encode(rgba, "PNG"),
        "png-palette-transparency": encode(palette, "PNG", transparency=0),
        "png-16bit": encode(grey16, "PNG"),
        "png-header-only": png_header_only(16, 12),
        "apng": animated("PNG"),
        "jpeg": encode(rgb, "JPEG", quality=80),
        "jpeg-progressive": encode(rgb, "JPEG", progressive=True),
        "jpeg-cmyk": encode(cmyk, "JPEG"),
        "jpeg-exif-rotated": with_orientation(6),
        "gif": encode(palette, "GIF"),
        "gif-animated": animated("GIF"),
        "webp-lossy": encode(rgb, "WEBP", quality=50),
        "webp-lossless-alpha": encode(rgba, "WEBP", lossless=True),
        "webp-animated": animated("WEBP"),
        "tiff": encode(rgb, "TIFF"),
        "tiff-deflate": encode(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "tiff-float": encode(float_image, "TIFF"),
        "tiff-16bit": encode(grey16, "TIFF"),
        "bmp": encode(rgb, "BMP"),
    }


SEEDS = _seeds()


def decodes_within_limits_or_refuses(data: bytes, limits: ImageLimits = LIMITS) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about metadata it skips; warnings are not the property
            image = decode_image(data, limits)
    except ClipFilterError as exc:
        assert_client_error(exc)
        return
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert len(data) <= limits.max_bytes
    assert 1 <= image.width * image.height <= limits.max_pixels, image.size
    np.asarray(image)  # the pixels are really there (a lazily failing image would raise here)


def assert_client_error(error: ClipFilterError) -> None:
    assert 400 <= error.status < 500, (error.status, error.code, error.message)
    assert error.code and error.message


def _set_dimensions(data: bytearray, fmt: str, width: int, height: int) -> None:
    """Rewrite the declared size in place where the format has it at a fixed offset (PNG, GIF, BMP)."""
    if fmt.startswith(("png", "apng")) and len(data) >= 24:
        data[16:24] = struct.pack(">II", width, height)
    elif fmt.startswith("gif") and len(data) >= 10:
        data[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    elif fmt == "bmp" and len(data) >= 26:
        data[18:26] = struct.pack("<ii", width & 0x7FFFFFFF, height if height < 2**31 else -1)


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    fmt = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[fmt])
    if draw(st.booleans()):
        dimension = st.sampled_from([0, 1, 63, 64, 65, 4096, 65535, 2**31 - 1, 2**32 - 1])
        _set_dimensions(data, fmt, draw(dimension), draw(dimension))
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        if action == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[position] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        elif action == "truncate":
            del data[position:]
        else:  # splice: the tail of another format's file
            other = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
            data[position:] = other[draw(st.integers(0, len(other) - 1)) :]
    return bytes(data)


def test_every_seed_decodes() -> None:
    """The unmutated seeds are valid images within the limits (else the mutations below start from refusals)."""
    for name, data in SEEDS.items():
        image = decode_image(data, LIMITS)
        assert image.mode == "RGB", name


@FUZZ_SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes_decode_or_refuse_cleanly(data: bytes) -> None:
    decodes_within_limits_or_refuses(data)


@FUZZ_SETTINGS
@given(st.sampled_from(sorted(SEEDS)), st.binary(max_size=256))
def test_valid_headers_with_random_bodies(fmt: str, tail: bytes) -> None:
    seed = SEEDS[fmt]
    decodes_within_limits_or_refuses(seed[: max(8, len(seed) // 4)] + tail)


@FUZZ_SETTINGS
@given(mutated_images())
def test_mutated_images_decode_or_refuse_cleanly(data: bytes) -> None:
    decodes_within_limits_or_refuses(data)


@FUZZ_SETTINGS
@given(mutated_images(), st.sampled_from([1, 100, 4 * 1024]), st.sampled_from([1, 16, 64 * 64]))
def test_tight_limits_are_never_exceeded(data: bytes, max_bytes: int, max_pixels: int) -> None:
    decodes_within_limits_or_refuses(data, ImageLimits(max_bytes=max_bytes, max_pixels=max_pixels))


@FUZZ_SETTINGS
@given(mutated_images(), st.sampled_from(["", "data:image/png;base64,", "data:;base64,", "data:image/png,"]))
def test_base64_of_mutated_images_decodes_or_refuses_cleanly(data: bytes, prefix: str) -> None:
    text = prefix + base64.b64encode(data).decode()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = decode_base64_image(text, LIMITS)
    except ClipFilterError as exc:
        assert_client_error(exc)
    else:
        assert image.mode == "RGB" and image.width * image.height <= LIMITS.max_pixels


@pytest.mark.parametrize("fmt", sorted(SEEDS))
def test_every_truncation_point_of_small_seeds(fmt: str) -> None:
    """Exhaustive where it is cheap: each seed cut at (up to) 200 evenly spaced lengths."""
    data = SEEDS[fmt]
    for length in sorted(set(np.linspace(0, len(data) - 1, min(len(data), 200), dtype=int).tolist())):
        decodes_within_limits_or_refuses(data[:length])


def test_seeds_round_trip_through_pillow() -> None:
    """Guard for the seeds themselves: each opens with Pillow as the format its name says."""
    expected = {"png": "PNG", "apng": "PNG", "jpeg": "JPEG", "gif": "GIF", "webp": "WEBP", "tiff": "TIFF", "bmp": "BMP"}
    for name, data in SEEDS.items():
        with Image.open(io.BytesIO(data)) as opened:
            assert opened.format in (expected[name.split("-")[0]], "MPO"), (name, opened.format)
