"""A test-only encoder with no model: fixed normalised vectors, instantly. For pipeline benchmarks.

`CLIP_PRETRAINED=instant-test` (refused unless `CLIP_FILTER_ALLOW_TEST_ENCODER=1`) keeps the real
preprocessing (the architecture's open_clip transform and tokenizer, per-batch normalisation, caption
tokenizing) and replaces only the forward pass, so `bench/bench.py` can measure what HTTP, decoding
and batching carry on their own: the ceiling a much faster model (a GPU) would see. Its scores mean
nothing; /info reports `weights: "instant-test"` (like random weights are flagged).
"""

from __future__ import annotations

import numpy as np
import open_clip
import torch

from clip_filter.core.config import Settings
from clip_filter.ml.encoder import ClipEncoder, ModelInfo, StagedPixels, TextBatch
from clip_filter.ml.text import BpeCache, TextEmbeddingCache, bound_memo

INSTANT_TAG = "instant-test"


def is_instant(settings: Settings) -> bool:
    return settings.pretrained.strip().lower() == INSTANT_TAG


class InstantEncoder(ClipEncoder):
    def __init__(self, settings: Settings) -> None:  # noqa: D107 - no model: ClipEncoder's fields set here
        # CLIP_TORCH_THREADS is applied by load_encoder before it gets here: the per-batch normalisation runs
        # torch ops, and torch's default OpenMP team (one per core) spin-waits beside the decode threads (the
        # ceiling bench measured ~5-10 ms of CPU per image on 2 cores of that spinning otherwise).
        config = open_clip.get_model_config(settings.model_name) or {}
        vision = config.get("vision_cfg", {})
        image_size = vision.get("image_size", 224)
        preprocess = open_clip.image_transform(image_size, is_train=False)
        tokenizer = open_clip.get_tokenizer(settings.model_name, cache_dir=str(settings.cache_dir))
        dim = int(config.get("embed_dim", 512))
        info = ModelInfo(
            model=settings.model_name,
            pretrained=INSTANT_TAG,
            weights=INSTANT_TAG,
            device="cpu",
            dtype="none",
            dim=dim,
            logit_scale=100.0,
            context_length=int(getattr(tokenizer, "context_length", 77)),
        )
        self.model = torch.nn.Identity()
        from clip_filter.ml.preprocess import ImagePreprocessor

        self.preprocessor = ImagePreprocessor(preprocess)
        self.tokenizer = tokenizer
        self.info = info
        self.batch_size = settings.batch_size
        self.text_cache = TextEmbeddingCache(settings.text_cache_size)
        self.bpe_cache = BpeCache(settings.tokenizer_cache_size)  # the same bounded tokenizer as ClipEncoder
        if hasattr(tokenizer, "bpe") and hasattr(tokenizer, "cache"):
            bound_memo(tokenizer)
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self._copy_stream = None
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((2, dim)).astype(np.float32)
        self._image_vector, self._text_vector = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        return self.run_staged(self.stage_pixels(pixels))  # the per-batch normalisation is pipeline work: kept

    def run_staged(self, staged: StagedPixels) -> np.ndarray:
        return np.repeat(self._image_vector[None], len(staged), axis=0)

    def encode_texts(self, texts: list[str]) -> TextBatch:
        if not texts:
            return TextBatch(np.zeros((0, self.info.dim), np.float32), [])
        _, truncated = self.tokenize(texts)  # tokenizing is pipeline work: kept
        return TextBatch(np.repeat(self._text_vector[None], len(texts), axis=0), list(truncated))
