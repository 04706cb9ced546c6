"""A small synchronous wrapper around one open_clip model: preprocess, encode images, encode texts.

One thread (the batcher's model thread, or the CLI) calls the encode methods; `preprocess` and
`lookup_texts` are safe to call from other threads so that decoding overlaps model work, and so is
`stage_pixels` (the batcher's stage thread, with prefetch).

Images go through the model in two steps, `stage_pixels` (stack, normalise, move to the model's device
and dtype) and `run_staged` (the forward pass, L2 normalisation, back to NumPy). On a CPU they are the
same tensor operations as one call. On CUDA (`StagedPixels`): the uint8 batch is put in pinned (page-locked)
host memory and copied with `non_blocking=True` on a side stream, normalised there in float32 (4x fewer
bytes cross the bus than float pixels would), and the model's stream waits for that copy's event, so the
next batch's copy overlaps the current batch's forward pass; `encode_pixels` stages chunk i+1 before it
runs chunk i.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clip_filter.images import DecodeTarget
from clip_filter.ml.pixels import PixelPlan
from clip_filter.ml.preprocess import ImagePreprocessor
from clip_filter.ml.text import BpeCache, TextEmbeddingCache, bound_memo, encode_text_trimmed, tokenize


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
class StagedPixels:
    """One chunk of model input, on the model's device and in its dtype (see stage_pixels)."""

    tensor: torch.Tensor
    ready: Any = None  # a torch.cuda.Event recorded after the copy (CUDA only)
    host: torch.Tensor | None = None  # the pinned source, kept alive until the copy is done

    def __len__(self) -> int:
        return int(self.tensor.shape[0])


@dataclass
class TextBatch:
    embeddings: np.ndarray  # (n, dim) float32, L2-normalised
    truncated: list[bool]


class TextLookup:
    """The text-cache flow, written once for every caller (model thread, event loop, worker threads):

    lookup = encoder.lookup_texts(texts)      # what the cache already has
    lookup.add(dict(zip(lookup.missing, rows)))  # rows computed however the caller computes them
    return lookup.batch()                     # stacked in the callers' order
    """

    def __init__(self, texts: list[str], known: dict[str, tuple[np.ndarray, bool]], dim: int) -> None:
        self.texts = texts
        self.known = known
        self.dim = dim
        # Each missing caption once, however often it is repeated.
        self.missing = list(dict.fromkeys(t for t in texts if t not in known))

    def add(self, rows: Mapping[str, tuple[np.ndarray, bool]]) -> None:
        """Computed (embedding, truncated) per caption."""
        self.known.update(rows)

    def batch(self) -> TextBatch:
        if not self.texts:
            return TextBatch(np.zeros((0, self.dim), np.float32), [])
        return TextBatch(
            embeddings=np.stack([self.known[t][0] for t in self.texts]).astype(np.float32, copy=False),
            truncated=[bool(self.known[t][1]) for t in self.texts],
        )


class ClipEncoder:
    # (JPEG draft, integer reduction) for decodes meant for this model: CLIP_FILTER_JPEG_DRAFT and
    # CLIP_FILTER_REDUCE_LARGE_IMAGES, set by ml/factory.load_encoder.
    reduced_decoding: tuple[bool, bool] = (True, True)
    # Resize only what the centre crop keeps (ml/pixels.py): CLIP_FILTER_CROP_FIRST_RESIZE, set by load_encoder.
    # Off here, so an encoder built by hand preprocesses exactly as open_clip does.
    crop_first_resize: bool = False

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Any,
        info: ModelInfo,
        batch_size: int,
        text_cache: TextEmbeddingCache,
        tokenizer_cache_size: int = 20_000,
    ) -> None:
        self.model = model
        self.preprocessor = ImagePreprocessor(preprocess)
        self.tokenizer = tokenizer
        self.info = info
        self.batch_size = batch_size
        self.text_cache = text_cache
        self.bpe_cache = BpeCache(tokenizer_cache_size)
        if hasattr(tokenizer, "bpe") and hasattr(tokenizer, "cache"):  # CLIP's BPE: its memo never shrinks
            bound_memo(tokenizer)
        first_param = next(model.parameters())
        self.device = first_param.device
        self.dtype = first_param.dtype
        self._copy_stream: Any = None  # CUDA: the side stream host-to-device copies run on (stage_pixels)

    # ---- images ------------------------------------------------------------------------------
    def pixel_plan(self) -> PixelPlan | None:
        """The model's decode + resize + crop as data (None: a transform the plan cannot express)."""
        return self.preprocessor.plan(*self.reduced_decoding, crop_first=self.crop_first_resize)

    @property
    def decode_target(self) -> DecodeTarget | None:
        """The smallest decode whose preprocessing gives exactly the model input the matching routes compute
        for the same bytes (ml/pixels.py); None: decode at full size."""
        plan = self.pixel_plan()
        return plan.target if plan is not None else None

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Resize and crop one RGB image into a CPU tensor for encode_pixels (thread-safe).

        uint8 when the model's transform allows it (normalised later, per batch); see ml/preprocess.py.
        """
        return self.preprocessor.image_to_tensor(image, crop_first=self.crop_first_resize)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """preprocess() outputs, stacked -> the float32 input open_clip's own transform would give."""
        return self.preprocessor.normalise_batch(pixels)

    def stage_pixels(self, pixels: torch.Tensor | Sequence[torch.Tensor]) -> StagedPixels:
        """preprocess() outputs (stacked, or a list of (3, H, W) tensors, on the CPU or already on the model's
        device) -> the model's input on its device and in its dtype. Thread-safe (the batcher's stage thread)."""
        with torch.inference_mode():
            if not isinstance(pixels, torch.Tensor):
                pixels = self._stack(list(pixels))
            if self.device.type != "cuda":
                return StagedPixels(self.normalise(pixels).to(self.device, self.dtype))
            if pixels.device.type == "cuda":  # decoded on the GPU already: nothing crosses the bus
                return StagedPixels(self.normalise(pixels).to(self.dtype))
            if self._copy_stream is None:
                self._copy_stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]  # unannotated in torch
            # Page-locked memory, so that the copy below runs asynchronously (_stack stacks into it directly).
            host = pixels if pixels.is_pinned() else pixels.contiguous().pin_memory()
            with torch.cuda.stream(self._copy_stream):
                tensor = self.normalise(host.to(self.device, non_blocking=True)).to(self.dtype)
                ready = torch.cuda.Event()  # type: ignore[no-untyped-call]  # unannotated in torch
                ready.record(self._copy_stream)
            return StagedPixels(tensor, ready, host)

    def _stack(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """One (n, 3, H, W) tensor; on CUDA, CPU pixels are stacked straight into pinned memory."""
        on_device = [p.device.type != "cpu" for p in pixels]
        if any(on_device):  # GPU-decoded JPEGs (beside CPU-decoded images, if any)
            return torch.stack([p.to(self.device) for p in pixels])
        if self.device.type != "cuda" or not pixels:
            return torch.stack(pixels)
        host = torch.empty((len(pixels), *pixels[0].shape), dtype=pixels[0].dtype, pin_memory=True)
        return torch.stack(pixels, out=host)

    def run_staged(self, staged: StagedPixels) -> np.ndarray:
        """A staged chunk -> (n, dim) float32 L2-normalised embeddings (the model thread)."""
        with torch.inference_mode():
            tensor = staged.tensor
            if staged.ready is not None:
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(staged.ready)  # the copy is done before the model reads it
                tensor.record_stream(stream)  # allocated on the copy stream, used on this one
            features = self.model.encode_image(tensor).float()
            return F.normalize(features, dim=-1).cpu().numpy().astype(np.float32, copy=False)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, 3, H, W) stacked preprocess() outputs -> (n, dim) float32 L2-normalised embeddings, in chunks of
        batch_size; each chunk is staged before the previous one runs (on CUDA its copy overlaps that run)."""
        starts = range(0, pixels.shape[0], self.batch_size)
        if not starts:
            return np.zeros((0, self.info.dim), np.float32)
        outputs = []
        staged = self.stage_pixels(pixels[: self.batch_size])
        for start in starts:
            after = start + self.batch_size
            upcoming = self.stage_pixels(pixels[after : after + self.batch_size]) if after < len(pixels) else None
            outputs.append(self.run_staged(staged))
            if upcoming is not None:
                staged = upcoming
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.info.dim), np.float32)
        return self.encode_pixels(torch.stack([self.preprocess(image) for image in images]))

    # ---- texts ----------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, list[bool]]:
        return tokenize(self.tokenizer, texts, self.info.context_length, self.bpe_cache)

    def lookup_texts(self, texts: list[str]) -> TextLookup:
        """The captions' cached embeddings (thread-safe) and the ones still to compute; see TextLookup."""
        return TextLookup(list(texts), self.text_cache.get_many(self.info.identity, texts), self.info.dim)

    def encode_texts(self, texts: list[str]) -> TextBatch:
        """Captions -> L2-normalised embeddings, reusing cached ones; truncated flags per caption."""
        lookup = self.lookup_texts(texts)
        for start in range(0, len(lookup.missing), self.batch_size):
            chunk = lookup.missing[start : start + self.batch_size]
            tokens, truncated = self.tokenize(chunk)
            with torch.inference_mode():
                features = encode_text_trimmed(self.model, tokens.to(self.device)).float()
                embeddings = F.normalize(features, dim=-1).cpu().numpy().astype(np.float32)
            fresh = {text: (embeddings[i], truncated[i]) for i, text in enumerate(chunk)}
            self.text_cache.put_many(self.info.identity, fresh)
            lookup.add(fresh)
        return lookup.batch()
