"""A small synchronous wrapper around one open_clip model: preprocess, encode images, encode texts.

One thread (the batcher's model thread, or the CLI) calls the encode methods; `preprocess` and
`cached_texts` are safe to call from other threads so that decoding overlaps model work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clip_filter.ml.preprocess import ImagePreprocessor
from clip_filter.ml.text import TextEmbeddingCache, encode_text_trimmed, tokenize


@dataclass(frozen=True)
class ModelInfo:
    model: str
    pretrained: str
    weights: str  # "pretrained" | "checkpoint" | "random"
    device: str
    dtype: str
    dim: int
    logit_scale: float
    context_length: int

    @property
    def identity(self) -> str:
        """What makes two embeddings comparable: same architecture and same weights."""
        return f"{self.model}/{self.pretrained}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TextBatch:
    embeddings: np.ndarray  # (n, dim) float32, L2-normalised
    truncated: list[bool]


class ClipEncoder:
    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Any,
        info: ModelInfo,
        batch_size: int,
        text_cache: TextEmbeddingCache,
    ) -> None:
        self.model = model
        self.preprocessor = ImagePreprocessor(preprocess)
        self.tokenizer = tokenizer
        self.info = info
        self.batch_size = batch_size
        self.text_cache = text_cache
        first_param = next(model.parameters())
        self.device = first_param.device
        self.dtype = first_param.dtype

    # ---- images ------------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Resize and crop one RGB image into a CPU tensor for encode_pixels (thread-safe).

        uint8 when the model's transform allows it (normalised later, per batch); see ml/preprocess.py.
        """
        return self.preprocessor.image_to_tensor(image)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """preprocess() outputs, stacked -> the float32 input open_clip's own transform would give."""
        return self.preprocessor.normalise_batch(pixels)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, 3, H, W) stacked preprocess() outputs -> (n, dim) float32 L2-normalised embeddings."""
        outputs = []
        with torch.inference_mode():
            for start in range(0, pixels.shape[0], self.batch_size):
                chunk = self.normalise(pixels[start : start + self.batch_size]).to(self.device, self.dtype)
                features = self.model.encode_image(chunk).float()
                outputs.append(F.normalize(features, dim=-1).cpu().numpy())
        if not outputs:
            return np.zeros((0, self.info.dim), np.float32)
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.info.dim), np.float32)
        return self.encode_pixels(torch.stack([self.preprocess(image) for image in images]))

    # ---- texts -------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, list[bool]]:
        return tokenize(self.tokenizer, texts, self.info.context_length)

    def cached_texts(self, texts: list[str]) -> dict[str, tuple[np.ndarray, bool]]:
        """The captions already in the text cache (thread-safe): text -> (embedding, truncated)."""
        return self.text_cache.get_many(self.info.identity, texts)

    def encode_texts(self, texts: list[str]) -> TextBatch:
        """Captions -> L2-normalised embeddings, reusing cached ones; truncated flags per caption."""
        if not texts:
            return TextBatch(np.zeros((0, self.info.dim), np.float32), [])
        known = self.cached_texts(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            tokens, truncated = self.tokenize(chunk)
            with torch.inference_mode():
                features = encode_text_trimmed(self.model, tokens.to(self.device)).float()
                embeddings = F.normalize(features, dim=-1).cpu().numpy().astype(np.float32)
            fresh = {text: (embeddings[i], truncated[i]) for i, text in enumerate(chunk)}
            self.text_cache.put_many(self.info.identity, fresh)
            known.update(fresh)
        return TextBatch(
            embeddings=np.stack([known[t][0] for t in texts]).astype(np.float32, copy=False),
            truncated=[bool(known[t][1]) for t in texts],
        )
