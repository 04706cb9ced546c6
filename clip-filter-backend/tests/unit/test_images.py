"""clip_filter.images: every supported format, every odd pixel mode, every refusal with its exact code."""

from __future__ import annotations

import base64
import io
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clip_filter import images
from clip_filter.core.errors import ClipFilterError
from clip_filter.image_base64 import base64_image_bytes, decode_base64_image
from clip_filter.images import (
    ERROR_STATUS,
    DecodeTarget,
    ImageDecodeError,
    ImageLimits,
    decode_image,
    make_thumbnail,
    probe_image,
    sniff_image_mimetype,
)

from .image_factory import (
    BLUE,
    GREEN,
    RED,
    animated,
    corner_marked,
    encode,
    noise,
    png_header_only,
    png_with_ztxt_bomb,
    two_colour,
    with_orientation,
)

AVIF_MAY_SKIP = pytest.mark.may_skip(reason="AVIF is only read where the installed Pillow supports it")
LIMITS = ImageLimits(max_bytes=25 * 1024 * 1024, max_pixels=50_000_000)


def close(actual, expected, tolerance: int = 40) -> bool:
    # An RGBA pixel is compared on its colour channels only.
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=False))


def refused(data: bytes, code: str, limits: ImageLimits = LIMITS) -> ImageDecodeError:
    """Decode `data`, expect ImageDecodeError with `code`, and check the error is well formed."""
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, limits)
    return check_error(info.value, code)


def check_error(error: ImageDecodeError, code: str) -> ImageDecodeError:
    assert error.code == code, (error.code, error.message)
    assert error.status == ERROR_STATUS[code]
    assert isinstance(error, ClipFilterError)
    # A human sentence: capitalised, ends with a full stop, no memory addresses from Pillow.
    assert error.message[0].isupper() and error.message.endswith("."), error.message
    assert "object at 0x" not in error.message
    assert error.to_dict()["code"] == code
    return error


def test_error_codes_and_statuses_match_the_architecture():
    assert ERROR_STATUS == {
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


# --- formats --------------------------------------------------------------------------------------

FORMATS = [
    # (Pillow save format, save options, expected mimetype, colour tolerance)
    ("JPEG", {"quality": 95}, "image/jpeg", 40),
    ("PNG", {}, "image/png", 0),
    ("GIF", {}, "image/gif", 12),
    ("WEBP", {"lossless": True}, "image/webp", 0),
    ("WEBP", {"quality": 90}, "image/webp", 40),
    ("BMP", {}, "image/bmp", 0),
    ("TIFF", {}, "image/tiff", 0),
    ("TIFF", {"compression": "tiff_lzw"}, "image/tiff", 0),
]


@pytest.mark.parametrize(("fmt", "options", "mimetype", "tolerance"), FORMATS)
def test_each_format_round_trips_to_rgb(fmt, options, mimetype, tolerance):
    data = encode(two_colour(), fmt, **options)
    assert sniff_image_mimetype(data) == mimetype
    image = decode_image(data, LIMITS)
    assert image.mode == "RGB" and image.size == (64, 48)
    assert close(image.getpixel((4, 24)), RED, tolerance)
    assert close(image.getpixel((60, 24)), BLUE, tolerance)


@pytest.mark.skipif(not images.HEIF_SUPPORTED, reason="pillow-heif is not importable here")
def test_heic_round_trips():
    data = encode(two_colour(), "HEIF", quality=95)
    assert sniff_image_mimetype(data) == "image/heic"
    image = decode_image(data, LIMITS)
    assert image.mode == "RGB" and image.size == (64, 48)
    assert close(image.getpixel((4, 24)), RED) and close(image.getpixel((60, 24)), BLUE)


@AVIF_MAY_SKIP
def test_avif_round_trips():
    if not images.AVIF_SUPPORTED or "AVIF" not in Image.SAVE:
        pytest.skip("this Pillow build cannot read or write AVIF")
    data = encode(two_colour(), "AVIF", quality=95)
    assert sniff_image_mimetype(data) == "image/avif"
    image = decode_image(data, LIMITS)
    assert image.mode == "RGB" and image.size == (64, 48)
    assert close(image.getpixel((4, 24)), RED) and close(image.getpixel((60, 24)), BLUE)


def test_sniff_returns_none_for_non_images():
    assert sniff_image_mimetype(b"") is None
    assert sniff_image_mimetype(b"hello") is None
    assert sniff_image_mimetype(b"%PDF-1.7") is None
    assert sniff_image_mimetype(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2") is None  # MP4 video


def test_sniff_reads_only_the_head_of_an_ftyp_box_whatever_size_it_declares():
    # Review L3: a declared box size of 4 GiB made the brand scan walk the whole upload, 4 bytes at a time.
    def ftyp(box_size: int, brands_at: int) -> bytes:
        head = box_size.to_bytes(4, "big") + b"ftypmif1" + b"\x00\x00\x00\x00"
        return head + b"\x00" * (brands_at - len(head)) + b"avif" + b"\x00" * 64

    assert sniff_image_mimetype(ftyp(0xFFFFFFFF, 32)) == "image/avif"  # compatible brands near the start: read
    assert sniff_image_mimetype(ftyp(0xFFFFFFFF, 4096)) == "image/heif"  # far beyond any real brand list: not read
    assert sniff_image_mimetype(ftyp(0xFFFFFFFF, 4096) + bytes(8 * 2**20)) == "image/heif"


# HEIC is left out: there libheif applies the container's own rotation and pillow-heif resets EXIF's.
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_6_rotates_size_and_pixels(fmt):
    # Stored 64x32 with red top-left; orientation 6 means "rotate 90 degrees clockwise to display".
    image = decode_image(with_orientation(6, fmt), LIMITS)
    assert image.size == (32, 64)
    assert close(image.getpixel((30, 2)), RED)  # top-left corner moved to the top-right
    assert close(image.getpixel((2, 2)), BLUE)
    assert close(image.getpixel((2, 62)), BLUE)


def test_exif_orientation_3_turns_upside_down():
    image = decode_image(with_orientation(3), LIMITS)
    assert image.size == (64, 32)
    assert close(image.getpixel((62, 30)), RED) and close(image.getpixel((2, 2)), BLUE)


def test_no_orientation_keeps_pixels_in_place():
    image = decode_image(encode(corner_marked(), "JPEG", quality=95), LIMITS)
    assert image.size == (64, 32) and close(image.getpixel((2, 2)), RED)


def test_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red in CMYK
    image = decode_image(data, LIMITS)
    assert image.mode == "RGB" and close(image.getpixel((8, 8)), (255, 0, 0))


def test_16_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 65535, 257 * 128, 1000]], dtype="<u2")
    data = encode(Image.frombytes("I;16", (4, 1), values.tobytes()), "PNG")
    image = decode_image(data, LIMITS)
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (255, 255, 255), (128, 128, 128), (4, 4, 4)]


def test_16_bit_big_endian_tiff_is_scaled():
    values = np.array([[0, 65535, 257 * 200]], dtype=">u2")
    data = encode(Image.frombytes("I;16B", (3, 1), values.tobytes()), "TIFF")
    image = decode_image(data, LIMITS)
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [0, 255, 200]


def test_32_bit_integer_and_float_tiffs_are_scaled():
    ints = Image.fromarray(np.array([[0, 65535, 257 * 64]], dtype=np.int32), "I")
    assert [decode_image(encode(ints, "TIFF"), LIMITS).getpixel((x, 0))[0] for x in range(3)] == [0, 255, 64]
    floats = Image.fromarray(np.array([[0.0, 1.0, 0.5, np.nan]], dtype=np.float32), "F")
    assert [decode_image(encode(floats, "TIFF"), LIMITS).getpixel((x, 0))[0] for x in range(4)] == [0, 255, 128, 0]
    wide = Image.fromarray(np.array([[-10.0, 90.0]], dtype=np.float32), "F")  # unknown range: stretched
    assert [decode_image(encode(wide, "TIFF"), LIMITS).getpixel((x, 0))[0] for x in range(2)] == [0, 255]


def test_palette_transparency_becomes_white():
    palette_image = Image.new("P", (4, 4), 0)
    palette_image.putpalette([*GREEN, *RED] + [0] * (256 * 3 - 6))
    palette_image.putpixel((0, 0), 1)
    for fmt in ("PNG", "GIF"):
        image = decode_image(encode(palette_image, fmt, transparency=1), LIMITS)
        assert image.getpixel((0, 0)) == (255, 255, 255), fmt
        assert close(image.getpixel((3, 3)), GREEN, 4), fmt


def test_rgba_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (*RED, 0))
    rgba.putpixel((1, 1), (0, 0, 0, 255))
    rgba.putpixel((2, 2), (0, 0, 0, 128))
    image = decode_image(encode(rgba, "PNG"), LIMITS)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 1)) == (0, 0, 0)
    assert close(image.getpixel((2, 2)), (127, 127, 127), 2)
    webp = decode_image(encode(rgba, "WEBP", lossless=True), LIMITS)
    assert webp.getpixel((0, 0)) == (255, 255, 255)


def test_rgb_png_with_colour_key_transparency():
    rgb = Image.new("RGB", (4, 4), RED)
    rgb.putpixel((0, 0), GREEN)
    image = decode_image(encode(rgb, "PNG", transparency=GREEN), LIMITS)
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((1, 1)) == RED


def test_la_grey_with_alpha():
    la = Image.new("LA", (4, 4), (0, 0))
    la.putpixel((1, 1), (50, 255))
    image = decode_image(encode(la, "PNG"), LIMITS)
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((1, 1)) == (50, 50, 50)


def test_one_bit_and_greyscale():
    bilevel = Image.new("1", (8, 8), 0)
    bilevel.putpixel((0, 0), 1)
    for fmt in ("PNG", "TIFF", "BMP", "GIF"):
        image = decode_image(encode(bilevel, fmt), LIMITS)
        assert image.mode == "RGB"
        assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((5, 5)) == (0, 0, 0), fmt
    grey = decode_image(encode(Image.new("L", (4, 4), 77), "PNG"), LIMITS)
    assert grey.getpixel((0, 0)) == (77, 77, 77)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "TIFF"])
def test_animated_images_give_their_first_frame(fmt):
    image = decode_image(animated(fmt), LIMITS)
    assert image.mode == "RGB" and image.size == (32, 24)
    assert close(image.getpixel((10, 10)), RED, 12)


def test_decoded_image_is_independent_and_loaded():
    image = decode_image(encode(noise(), "PNG"), LIMITS)
    assert image.getpixel((0, 0)) == noise().getpixel((0, 0))
    assert np.array_equal(np.asarray(image), np.asarray(noise()))


# --- refusals ------------------------------------------------------------------------------------


def test_empty_bytes():
    refused(b"", "empty_image")


def test_byte_limit_is_checked_before_decoding():
    data = encode(noise(), "PNG")
    error = refused(data, "image_too_large", ImageLimits(max_bytes=len(data) - 1, max_pixels=10**9))
    assert error.details == {"limit": len(data) - 1, "actual": len(data)}
    # Not even an image: the size alone decides.
    refused(b"x" * 101, "image_too_large", ImageLimits(max_bytes=100, max_pixels=10))
    assert decode_image(data, ImageLimits(max_bytes=len(data), max_pixels=10**9)).size == (48, 40)


def test_pixel_limit():
    data = encode(noise((100, 60)), "PNG")
    error = refused(data, "image_too_many_pixels", ImageLimits(max_bytes=10**7, max_pixels=5999))
    assert error.details == {"width": 100, "height": 60, "limit": 5999, "actual": 6000}
    assert decode_image(data, ImageLimits(max_bytes=10**7, max_pixels=6000)).size == (100, 60)


def test_pixel_limit_is_checked_from_the_header_before_pixel_data():
    # 3000x3000 header over garbage pixel data: the size check refuses it before any decoding.
    garbage = np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    data = png_header_only(3000, 3000, idat=garbage)
    refused(data, "corrupt_image")  # within the limit it would be decoded, and fail
    refused(data, "image_too_many_pixels", ImageLimits(max_bytes=10**7, max_pixels=1_000_000))


def test_decompression_bomb_from_pillows_check():
    refused(png_header_only(100_000, 100_000), "decompression_bomb")


def test_decompression_bomb_from_our_own_check_below_pillows_threshold():
    # 81 MP is under Pillow's default warning threshold (~89 MP), so only our check sees it.
    error = refused(png_header_only(9000, 9000), "decompression_bomb")
    assert error.details["width"] == 9000 and error.details["actual"] == 81_000_000


def test_decompression_bomb_without_pillows_global_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    refused(png_header_only(100_000, 100_000), "decompression_bomb")


def test_pillows_bomb_warning_never_escapes_even_when_warnings_are_errors():
    limits = ImageLimits(max_bytes=10**7, max_pixels=10**9)  # our limit allows it: Pillow's warning fires
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refused(png_header_only(9500, 9500), "decompression_bomb", limits)


def test_compressed_text_chunk_bomb():
    refused(png_with_ztxt_bomb(), "decompression_bomb")


@pytest.mark.parametrize(
    "fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "HEIF", pytest.param("AVIF", marks=AVIF_MAY_SKIP)]
)
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_files(fmt, keep):
    if fmt == "AVIF" and not (images.AVIF_SUPPORTED and "AVIF" in Image.SAVE):
        pytest.skip("this Pillow build cannot read or write AVIF")
    data = encode(noise((64, 48)), fmt)
    cut = data[: max(32, int(len(data) * keep))]
    error = refused(cut, "truncated_image")
    assert error.details["format"]


def test_truncated_jpeg_header():
    # Cut inside the JPEG header (the integration suite sends this one).
    data = encode(Image.new("RGB", (64, 64), "red"), "JPEG")
    refused(data[:200], "truncated_image")


def test_corrupt_png_and_gif():
    data = bytearray(encode(noise(), "PNG"))
    data[50] ^= 0xFF  # inside IDAT: the chunk checksum no longer matches
    refused(bytes(data), "corrupt_image")
    gif = bytearray(encode(noise(), "GIF"))
    gif[10] = 0xFF  # flags claim a global palette that overlaps the image data
    gif[13:800] = b"\xff" * 787
    refused(bytes(gif), "corrupt_image")


@pytest.mark.parametrize(
    "data",
    [
        b"hello",  # text posing as image.jpg
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj",
        b"PK\x03\x04" + b"\x00" * 40,  # zip
        b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2",  # mp4
        b"\x00\x00",
        bytes(range(256)),
    ],
)
def test_not_an_image(data):
    refused(data, "not_an_image")


def test_random_bytes_are_not_an_image():
    rng = np.random.default_rng(7)
    for _ in range(20):
        data = rng.integers(0, 256, 500, dtype=np.uint8).tobytes()
        if sniff_image_mimetype(data) is None and images._unsupported_format_name(data) is None:
            refused(data, "not_an_image")


def test_error_names_what_the_data_is():
    assert "PDF" in refused(b"%PDF-1.4\n", "not_an_image").message
    assert "text" in refused(b"just some words", "not_an_image").message
    assert "JPEG, PNG" in refused(b"hello", "not_an_image").message


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>', "SVG"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
        (b"8BPS\x00\x01" + b"\x00" * 40, "Photoshop (PSD)"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n", "PostScript/EPS"),
        (encode(Image.new("RGB", (16, 16), RED), "ICO"), "ICO"),
        (encode(Image.new("RGB", (16, 16), RED), "JPEG2000"), "JPEG 2000"),
        (encode(Image.new("RGB", (16, 16), RED), "PPM"), "PNM/PPM"),
        (encode(Image.new("RGB", (16, 16), RED), "TGA"), "TGA"),
        (encode(Image.new("RGB", (16, 16), RED), "QOI"), "QOI"),
    ],
)
def test_recognised_but_unsupported_formats(data, name):
    error = refused(data, "unsupported_image_format")
    assert error.details["format"] == name and name in error.message


def test_every_refusal_is_an_image_decode_error_with_a_sentence():
    for code in ERROR_STATUS:
        check_error(ImageDecodeError(code, f"Example message for {code}."), code)


# --- base64 -------------------------------------------------------------------------------------

PNG = encode(two_colour((8, 6)), "PNG")


def test_base64_plain_with_whitespace_and_newlines():
    text = base64.encodebytes(PNG).decode()  # wrapped at 76 characters with newlines
    assert "\n" in text
    assert decode_base64_image("  " + text.replace("\n", "\r\n") + "\t", LIMITS).size == (8, 6)


def test_base64_data_uri():
    text = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert decode_base64_image(text, LIMITS).size == (8, 6)
    assert decode_base64_image("DATA:image/png;charset=x;base64,\n" + base64.encodebytes(PNG).decode(), LIMITS)
    # The declared type is not trusted: the bytes decide.
    assert decode_base64_image("data:application/octet-stream;base64," + base64.b64encode(PNG).decode(), LIMITS)


def test_base64_url_safe_and_unpadded():
    data = encode(noise((16, 16), seed=3), "PNG")
    url_safe = base64.urlsafe_b64encode(data).decode()
    assert "-" in url_safe or "_" in url_safe
    assert decode_base64_image(url_safe, LIMITS).size == (16, 16)
    assert decode_base64_image(url_safe.rstrip("="), LIMITS).size == (16, 16)
    assert decode_base64_image(base64.b64encode(data).decode().rstrip("="), LIMITS).size == (16, 16)


@pytest.mark.parametrize(
    "text",
    [
        "not base64!!",
        "abcde",  # impossible length
        "ab=cd===",  # padding in the middle
        "aGVsbG8gd29ybGQ*",
        "ÄÖÜ" * 4,
        "data:image/png,%89PNG",  # a data URI that is not base64
    ],
)
def test_invalid_base64(text):
    with pytest.raises(ImageDecodeError) as info:
        decode_base64_image(text, LIMITS)
    check_error(info.value, "invalid_base64")


def test_base64_that_is_not_a_string():
    with pytest.raises(ImageDecodeError) as info:
        decode_base64_image(12345, LIMITS)  # type: ignore[arg-type]
    check_error(info.value, "invalid_base64")


def test_base64_empty_and_too_large():
    for text in ("", "   \n", "data:image/png;base64,"):
        with pytest.raises(ImageDecodeError) as info:
            decode_base64_image(text, LIMITS)
        check_error(info.value, "empty_image")
    with pytest.raises(ImageDecodeError) as info:
        decode_base64_image("A" * 4000, ImageLimits(max_bytes=1000, max_pixels=10**6))
    assert check_error(info.value, "image_too_large").details["limit"] == 1000


def test_base64_of_non_images_reports_the_image_error():
    with pytest.raises(ImageDecodeError) as info:
        decode_base64_image(base64.b64encode(b"%PDF-1.4\n").decode(), LIMITS)
    check_error(info.value, "not_an_image")


# --- thumbnails -----------------------------------------------------------------------------------


def test_thumbnail_is_jpeg_and_keeps_aspect_ratio():
    original = two_colour((400, 200))
    data = make_thumbnail(original, 100)
    thumb = Image.open(io.BytesIO(data))
    assert thumb.format == "JPEG" and thumb.size == (100, 50)
    assert close(thumb.getpixel((5, 25)), RED) and close(thumb.getpixel((95, 25)), BLUE)
    assert original.size == (400, 200)  # the caller's image is untouched


def test_thumbnail_never_enlarges_and_handles_alpha():
    assert Image.open(io.BytesIO(make_thumbnail(two_colour((30, 60)), 256))).size == (30, 60)
    transparent = Image.new("RGBA", (50, 20), (0, 0, 0, 0))
    thumb = Image.open(io.BytesIO(make_thumbnail(transparent, 10)))
    assert thumb.size == (10, 4) and close(thumb.getpixel((5, 2)), (255, 255, 255), 3)


def test_thumbnail_size_must_be_positive():
    with pytest.raises(ValueError, match="thumbnail size must be at least 1"):
        make_thumbnail(two_colour(), 0)


# --- concurrency and fuzzing ------------------------------------------------------------------------


def test_decoding_is_thread_safe():
    inputs = [encode(noise((40, 30), seed=i), fmt) for i, fmt in enumerate(["PNG", "JPEG", "WEBP", "GIF"] * 6)]
    expected = [np.asarray(decode_image(data, LIMITS)) for data in inputs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda data: np.asarray(decode_image(data, LIMITS)), inputs * 3))
    for i, result in enumerate(results):
        assert np.array_equal(result, expected[i % len(inputs)])


FUZZ_LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=1_000_000)
SEEDS = {fmt: encode(noise((24, 16), seed=5), fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "TIFF")}


def decodes_or_refuses(data: bytes) -> None:
    try:
        image = decode_image(data, FUZZ_LIMITS)
    except ImageDecodeError as error:
        code = error.code
    else:
        assert image.mode == "RGB"
        return
    assert code in ERROR_STATUS


@st.composite
def mutated(draw):
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if action == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[position] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 16))]
        else:
            del data[max(8, position) :]
        if not data:
            break
    return bytes(data)


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes_only_raise_image_errors(data):
    decodes_or_refuses(data)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the broken metadata it skips
@FUZZ
@given(mutated())
def test_fuzz_mutated_images_only_raise_image_errors(data):
    decodes_or_refuses(data)


@pytest.mark.filterwarnings("error")  # a process that turns warnings into errors still gets ImageDecodeError
@FUZZ
@given(mutated())
def test_fuzz_mutated_images_with_warnings_as_errors(data):
    decodes_or_refuses(data)


@pytest.mark.filterwarnings("ignore::UserWarning")
@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.binary(min_size=1, max_size=64))
def test_fuzz_valid_header_random_body(fmt, tail):
    seed = SEEDS[fmt]
    decodes_or_refuses(seed[: len(seed) // 3] + tail)


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_base64_text_only_raises_image_errors(text):
    code = None
    try:
        decode_base64_image(text, FUZZ_LIMITS)
    except ImageDecodeError as error:
        code = error.code
    assert code is None or code in ERROR_STATUS


# --- reduced-scale decoding and header probes (issue 11: bounded decoding) -----------------------------

TARGET = DecodeTarget(448, 448)


def big(mode: str, size=(3000, 2000)) -> Image.Image:
    """A smooth image (reductions of it stay close to a resize of the full one) with a red top-left block."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    image.paste(RED, (0, 0, size[0] // 4, size[1] // 4))
    return image.convert(mode) if mode != "RGB" else image


def test_probe_reads_the_size_without_decoding_the_pixels():
    # A header claiming 5000x5000 followed by a tiny IDAT: decoding it would fail, the probe does not.
    header = probe_image(png_header_only(5000, 5000), LIMITS)
    assert header.mimetype == "image/png" and header.size == header.decoded_size == (5000, 5000)
    assert header.decoded_pixels == 25_000_000


def test_probe_refuses_what_decode_refuses():
    with pytest.raises(ImageDecodeError) as caught:
        probe_image(png_header_only(5000, 5000), ImageLimits(10**7, 1_000_000))
    assert caught.value.code == "decompression_bomb"  # 25 M pixels in 100 bytes
    with pytest.raises(ImageDecodeError) as caught:
        probe_image(b"%PDF-1.7 hello", LIMITS)
    assert caught.value.code == "not_an_image"


def test_jpeg_probe_reports_the_dct_scaled_size_and_decode_matches_it():
    data = encode(big("RGB"), "JPEG", quality=90)
    header = probe_image(data, LIMITS, TARGET)
    # 2000 // 448 = 4: libjpeg decodes at 1/4 scale, both sides still >= 448.
    assert header.size == (3000, 2000) and header.decoded_size == (750, 500)
    image = decode_image(data, LIMITS, TARGET)
    assert image.size == (750, 500) and image.mode == "RGB"
    assert close(image.getpixel((10, 10)), RED)
    assert decode_image(data, LIMITS).size == (3000, 2000)  # no target: full size, as before


def test_jpeg_draft_can_be_turned_off_and_small_jpegs_are_untouched():
    data = encode(big("RGB"), "JPEG", quality=90)
    assert probe_image(data, LIMITS, DecodeTarget(448, 448, jpeg_draft=False)).decoded_size == (3000, 2000)
    small = encode(big("RGB", (800, 600)), "JPEG", quality=90)  # 600 // 448 = 1: full size
    assert decode_image(small, LIMITS, TARGET).size == (800, 600)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "1", "P", "I;16", "I", "F"])
def test_large_non_jpeg_is_reduced_but_never_below_the_target(mode):
    fmt = "TIFF" if mode in ("I", "F") else "PNG"
    source = big(mode)
    data = encode(source, fmt)
    assert probe_image(data, LIMITS, TARGET).decoded_size == (3000, 2000)  # decoded at full size, then reduced
    image = decode_image(data, LIMITS, TARGET)
    assert image.mode == "RGB" and image.size == (750, 500)  # factor min(3000 // 448, 2000 // 448) = 4
    full = decode_image(data, LIMITS).resize((750, 500), Image.Resampling.BOX)
    difference = np.abs(np.asarray(image, np.int16) - np.asarray(full, np.int16))
    assert difference.mean() < 2.0, (mode, difference.mean())


def test_reduction_can_be_turned_off():
    data = encode(big("RGB"), "PNG")
    assert decode_image(data, LIMITS, DecodeTarget(448, 448, reduce=False)).size == (3000, 2000)


def test_reduction_keeps_the_aspect_and_the_shorter_side_limit():
    data = encode(big("RGB", (5000, 900)), "PNG")
    assert decode_image(data, LIMITS, TARGET).size == (2500, 450)  # 900 // 448 = 2 decides


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_reduced_images_keep_their_exif_orientation(fmt):
    exif = Image.Exif()
    exif[0x0112] = 6
    options = {"quality": 95} if fmt == "JPEG" else {}
    data = encode(big("RGB", (2000, 1000)), fmt, exif=exif, **options)
    image = decode_image(data, LIMITS, TARGET)
    assert image.size == (500, 1000)  # reduced 1/2 (JPEG: DCT, others: box), then turned upright
    # Red (top-left) went to the top-right; the gradient's white bottom-left to the top-left.
    assert close(image.getpixel((490, 10)), RED) and close(image.getpixel((10, 10)), (255, 255, 255), 60)


def test_transparent_palette_image_is_composited_before_the_reduction():
    image = Image.new("P", (2000, 2000), 0)
    image.putpalette([0, 0, 0, 255, 0, 0])
    image.paste(1, (0, 0, 1000, 2000))
    data = encode(image, "PNG", transparency=0)
    reduced = decode_image(data, LIMITS, TARGET)
    assert reduced.size == (500, 500)
    assert reduced.getpixel((10, 10)) == (255, 0, 0) and reduced.getpixel((490, 10)) == (255, 255, 255)


def test_base64_fast_and_tolerant_paths_give_the_same_bytes():
    data = encode(noise((40, 30)), "PNG")
    plain = base64.b64encode(data).decode()
    expected = decode_image(data, LIMITS).tobytes()
    for text in (
        plain,
        plain.rstrip("="),
        " " + plain + "\n",
        plain[:10] + "\n" + plain[10:],
        base64.urlsafe_b64encode(data).decode(),
        "data:image/png;base64," + plain,
    ):
        assert decode_base64_image(text, LIMITS).tobytes() == expected
    assert base64_image_bytes(plain, LIMITS) == data


def _bytes_or_code(function, text):
    try:
        return function(text, LIMITS)
    except ImageDecodeError as error:
        return error.code


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
        st.text(alphabet="ABCDab019+/=-_ \n!é", max_size=24),
    )
)
def test_the_fast_base64_decoder_agrees_with_the_tolerant_path(text):
    """pybase64 (the fast path, strict) must give the bytes the stdlib's tolerant path gives, or step aside:
    never other bytes, never an error the tolerant path would not give."""
    from clip_filter.image_base64 import _tolerant_base64

    fast = _bytes_or_code(base64_image_bytes, text)
    tolerant = _bytes_or_code(_tolerant_base64, text)
    assert fast == tolerant or (fast, tolerant) == ("invalid_base64", "empty_image")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_the_original_upright_size_is_known_from_a_reduced_decode_and_from_the_header(fmt, orientation):
    """What collections record (width, height) and immich reports: the full-size upright image's, while the
    pixels come from a reduced decode."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.new("RGB", (1800, 1200), (40, 120, 200)).save(buffer, fmt, exif=exif.tobytes())
    data = buffer.getvalue()
    limits = images.ImageLimits(max_bytes=1 << 26, max_pixels=10**8)
    full = images.decode_image(data, limits)
    upright = (1200, 1800) if orientation in (6, 8) else (1800, 1200)
    assert full.size == upright
    target = images.DecodeTarget(256, 256)
    reduced, size = images.decode_image_sized(data, limits, target)
    assert size == upright and max(reduced.size) < 1800 and min(reduced.size) >= 256
    assert (reduced.size[0] > reduced.size[1]) == (upright[0] > upright[1])  # turned like the full decode
    assert images.decode_image_sized(data, limits)[1] == upright
    assert images.probe_image(data, limits, target).upright_size == upright
