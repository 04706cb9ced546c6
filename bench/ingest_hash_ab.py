#!/usr/bin/env python3
"""Ingestor._prepare_after_dedup's CPU per new image, before (hash for the duplicate check, then prepare hashes
again) and after (prepare reuses the hash, as it does now), same process, interleaved.

    .venv/bin/python bench/ingest_hash_ab.py
"""
import sys, timeit, io
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clip-filter-backend"))
import numpy as np
from PIL import Image
from draft_fidelity import encode, photo_like
from clip_filter.collections.ingest import IngestLimits, Source, prepare, sha256_hex
from clip_filter.core.config import Settings
from clip_filter.images import DecodeTarget
def png320(s):
    rng = np.random.default_rng(s); b = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (320, 320, 3), dtype=np.uint8)).save(b, "PNG"); return b.getvalue()
limits = IngestLimits.from_settings(Settings())
target = DecodeTarget(448, 448, jpeg_draft=True, reduce=True)
def before(data):
    h = sha256_hex(data); return prepare(0, Source(filename="x", data=data), limits, target)
def after(data):
    h = sha256_hex(data); return prepare(0, Source(filename="x", data=data), limits, target, sha256=h)
for name, data in [("4000x3000 JPEG", encode(photo_like((4000, 3000), 1), "JPEG", quality=95)),
                   ("1920x1080 JPEG", encode(photo_like((1920, 1080), 1), "JPEG", quality=90)),
                   ("320x320 noise PNG (bench ingest)", png320(1))]:
    assert before(data).sha256 == after(data).sha256
    n = 20; b = []; a = []
    for _ in range(4):
        b.append(timeit.timeit(lambda: before(data), number=n) / n * 1e3)
        a.append(timeit.timeit(lambda: after(data), number=n) / n * 1e3)
    print(f"{name:34s} {len(data)/1e6:5.2f} MB: before {min(b):6.2f} ms, after {min(a):6.2f} ms per image ({min(a)/min(b)-1:+.1%})")
