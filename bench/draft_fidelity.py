#!/usr/bin/env python3
"""Reduced-scale decoding and crop-first resizing vs the exact path: how different is the model input, and the embedding?

    .venv/bin/python bench/draft_fidelity.py            # prints a table, writes bench/results/draft_fidelity.json
    .venv/bin/python bench/draft_fidelity.py --quick    # fewer images

Both sides run clip-filter's own path (clip_filter.ml.pixels.decode_to_pixels, then the per-batch
normalisation): "full" decodes every image at full size (CLIP_FILTER_JPEG_DRAFT=0,
CLIP_FILTER_REDUCE_LARGE_IMAGES=0), "reduced" lets JPEG use libjpeg's DCT scaling and other formats an
integer box reduction, down to twice the model input on each side, before the same exact resize;
"crop-first" resizes only the source box under the centre crop (CLIP_FILTER_CROP_FIRST_RESIZE); "default"
is both, as the server runs by default.

Images: the two real photos scikit-learn ships (china.jpg, flower.jpg, 640x427: too small to be
reduced, they show the rule leaves them alone), the same upscaled to 1920x1280 and 2880x1920 and
re-encoded (photo content at camera sizes), and generated photo-like images (smooth gradients,
texture, noise) at 640x480, 1920x1080 and 4000x3000, as JPEG q=90, plus 1920x1080 PNG screenshots.
Per set: the normalised input's mean and max absolute difference, and ViT-B-32 (random weights, fixed
seed) image embeddings' min and mean cosine between the two paths; and the decode+preprocess time.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clip-filter-backend"))


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # noqa: BLE001
        return platform.processor() or "unknown"


def photo_like(size: tuple[int, int], seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    pixels = np.zeros((h, w, 3), np.float32)
    for _ in range(4):  # smooth colour fields
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.2, 0.8) * max(w, h)
        pixels += rng.uniform(20, 90, 3) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
    period = rng.uniform(0.004, 0.03, 2) * 2 * np.pi * 1920 / w  # texture at a similar scale in every size
    pixels += 25 * (np.sin(xx * period[0]) * np.cos(yy * period[1]))[..., None]
    edges = (np.sin(xx / w * rng.uniform(4, 12) + yy / h * rng.uniform(2, 8)) > 0.6).astype(np.float32)
    pixels += 40 * edges[..., None] * rng.uniform(-1, 1, 3)
    pixels += rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(pixels + 60, 0, 255).astype(np.uint8))


def screenshot(seed: int):
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (1920, 1080), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = int(rng.integers(0, 1800)), int(rng.integers(0, 1000))
        draw.rectangle((x, y, x + int(rng.integers(40, 600)), y + int(rng.integers(20, 300))),
                       fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    for row in range(0, 1080, 18):
        draw.text((20 + (row * 7) % 300, row), "clip-filter pipeline " * 6, fill=(20, 20, 20))
    return image


def encode(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def image_sets(quick: bool) -> dict[str, list[bytes]]:
    from PIL import Image

    sets: dict[str, list[bytes]] = {}
    try:
        import sklearn.datasets

        folder = Path(sklearn.datasets.__file__).parent / "images"
        real = [Image.open(path).convert("RGB") for path in sorted(folder.glob("*.jpg"))]
    except Exception:  # noqa: BLE001 - scikit-learn is optional: the generated sets still run
        real = []
    if real:
        sets["real photos 640x427 JPEG (sklearn)"] = [encode(im, "JPEG", quality=90) for im in real]
        for scale in (3, 4.5):
            size = (int(640 * scale), int(427 * scale))
            sets[f"real photos upscaled {size[0]}x{size[1]} JPEG"] = [
                encode(im.resize(size, Image.Resampling.LANCZOS), "JPEG", quality=90) for im in real
            ]
    n = 3 if quick else 8
    for size in ((640, 480), (1920, 1080), (4000, 3000)):
        count = max(2, n // 2) if size == (4000, 3000) else n
        sets[f"photo-like {size[0]}x{size[1]} JPEG"] = [
            encode(photo_like(size, seed), "JPEG", quality=90) for seed in range(count)
        ]
    sets["screenshots 1920x1080 PNG"] = [encode(screenshot(seed), "PNG") for seed in range(max(2, n // 2))]
    return sets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "draft_fidelity.json")
    args = parser.parse_args()

    import open_clip
    import torch

    from clip_filter.images import ImageLimits
    from clip_filter.ml.pixels import decode_to_pixels
    from clip_filter.ml.preprocess import ImagePreprocessor

    torch.manual_seed(0)
    model, _, transform = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model.eval()
    pre = ImagePreprocessor(transform)
    plans = {
        "full": pre.plan(False, False),  # open_clip's exact path: full decode, full resize, then the crop
        "reduced": pre.plan(True, True),  # CLIP_FILTER_JPEG_DRAFT + CLIP_FILTER_REDUCE_LARGE_IMAGES only
        "crop-first": pre.plan(False, False, crop_first=True),  # CLIP_FILTER_CROP_FIRST_RESIZE only
        "default": pre.plan(True, True, crop_first=True),  # the server's defaults: all three on
    }
    limits = ImageLimits(max_bytes=50 * 1024 * 1024, max_pixels=50_000_000)

    rows = []
    for name, files in image_sets(args.quick).items():
        timings, pixels = {}, {}
        for label, plan in plans.items():
            decode_to_pixels(files[0], limits, plan)  # warm
            started = time.perf_counter()
            pixels[label] = torch.stack([torch.from_numpy(decode_to_pixels(f, limits, plan)) for f in files])
            timings[label] = (time.perf_counter() - started) / len(files) * 1000
        inputs = {label: pre.normalise_batch(p) for label, p in pixels.items()}
        with torch.inference_mode():
            embeddings = {label: torch.nn.functional.normalize(model.encode_image(x), dim=-1)
                          for label, x in inputs.items()}
        row = {"images": name, "n": len(files)}
        for label in ("reduced", "crop-first", "default"):
            difference = (inputs["full"] - inputs[label]).abs()
            cosine = (embeddings["full"] * embeddings[label]).sum(-1)
            key = label.replace("-", "_")
            row.update({f"{key}_input_mean_abs_diff": float(difference.mean()),
                        f"{key}_input_max_abs_diff": float(difference.max()),
                        f"{key}_cosine_min": float(cosine.min()), f"{key}_cosine_mean": float(cosine.mean())})
        row.update({f"decode_ms_{label.replace('-', '_')}": round(ms, 2) for label, ms in timings.items()})
        rows.append(row)

    cpu = cpu_name()
    print(f"reduced-scale decoding and crop-first resizing vs open_clip's exact path (full decode, full resize, "
          f"crop), ViT-B-32 random weights (seed 0); CPU: {cpu}")
    print(f"{'':44} {'':>3} {'reduced':>25} {'crop-first':>25} {'default (both)':>25}  decode + preprocess ms")
    print(f"{'images':44} {'n':>3}" + f" {'mean|d|':>8} {'max|d|':>7} {'cos min':>8}" * 3
          + f" {'full':>6} {'red.':>6} {'crop1st':>7} {'default':>7}")
    for r in rows:
        print(f"{r['images']:44} {r['n']:3d}" + "".join(
            f" {r[k + '_input_mean_abs_diff']:8.5f} {r[k + '_input_max_abs_diff']:7.3f} {r[k + '_cosine_min']:8.5f}"
            for k in ("reduced", "crop_first", "default"))
            + f" {r['decode_ms_full']:6.1f} {r['decode_ms_reduced']:6.1f} {r['decode_ms_crop_first']:7.1f}"
              f" {r['decode_ms_default']:7.1f}")
    worst = min(r["default_cosine_min"] for r in rows)
    worst_reduced = min(r["reduced_cosine_min"] for r in rows)
    worst_crop_first = min(r["crop_first_cosine_min"] for r in rows)
    verdict = "within" if min(worst, worst_reduced, worst_crop_first) >= 0.995 else "NOT within"
    print(f"worst cosine: reduced {worst_reduced:.5f}, crop-first {worst_crop_first:.7f}, both {worst:.5f}: "
          f"{verdict} the 0.995 bound for making them the default")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu, "rows": rows, "worst_cosine": worst, "worst_cosine_reduced": worst_reduced,
                                     "worst_cosine_crop_first": worst_crop_first}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
