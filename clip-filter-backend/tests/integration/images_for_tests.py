"""Small images made in code for the integration tests (no binary fixtures)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def png_bytes(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """A distinct image per seed: smooth colour gradients plus noise, so embeddings differ."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-3, 3, (2, 3))
    pixels = base + xx[..., None] * slope[0] + yy[..., None] * slope[1] + rng.normal(0, 20, (h, w, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
